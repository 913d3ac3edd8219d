import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import { api, apiKey, setApiKey } from "./api";
import { Link } from "./components/ui";
import { AgentEdit } from "./pages/AgentEdit";
import { Agents } from "./pages/Agents";
import { ConversationDetail, Conversations } from "./pages/Conversations";
import { KnowledgeBaseDetail, KnowledgeBases } from "./pages/Knowledge";
import { SignIn } from "./pages/SignIn";
import { Talk } from "./pages/Talk";
import { Usage } from "./pages/Usage";
import { Widget } from "./pages/Widget";
import { match, navigate, usePath } from "./router";
import "./styles.css";

const NAV: [string, string][] = [
  ["/agents", "Agents"],
  ["/talk", "Talk"],
  ["/conversations", "Conversations"],
  ["/knowledge", "Knowledge"],
  ["/usage", "Usage & billing"],
  ["/widget", "Widget"],
];

function Route({ path }: { path: string }) {
  let params: Record<string, string> | null;
  if ((params = match("/agents/:id", path))) return <AgentEdit id={params.id} />;
  if (match("/agents", path) || match("/", path)) return <Agents />;
  if ((params = match("/talk/:id", path))) return <Talk agentId={params.id} key={params.id} />;
  if (match("/talk", path)) return <Talk />;
  if ((params = match("/conversations/:id", path))) return <ConversationDetail id={params.id} />;
  if (match("/conversations", path)) return <Conversations />;
  if ((params = match("/knowledge/:id", path))) return <KnowledgeBaseDetail id={params.id} />;
  if (match("/knowledge", path)) return <KnowledgeBases />;
  if (match("/usage", path)) return <Usage />;
  if (match("/widget", path)) return <Widget />;
  return (
    <section>
      <h1>Not found</h1>
      <p>
        Nothing at {path}. <Link href="/agents">Back to the agents</Link>.
      </p>
    </section>
  );
}

function App() {
  const path = usePath();
  const [signedIn, setSignedIn] = useState(Boolean(apiKey()));
  const [account, setAccount] = useState<{ name: string; email: string } | null>(null);
  useEffect(() => {
    const out = () => {
      setApiKey(null);
      setSignedIn(false);
    };
    window.addEventListener("airies:signed-out", out);
    return () => window.removeEventListener("airies:signed-out", out);
  }, []);
  useEffect(() => {
    if (signedIn) api<{ name: string; email: string }>("/accounts/me").then(setAccount, () => setAccount(null));
  }, [signedIn]);

  if (!signedIn) return <SignIn onSignedIn={() => setSignedIn(true)} />;
  const section = "/" + (path.split("?")[0].split("/")[1] ?? "");
  return (
    <div class="shell">
      <nav class="sidebar">
        <div class="brand">Airies</div>
        {NAV.map(([href, label]) => (
          <Link key={href} href={href} class={section === href || (section === "/" && href === "/agents") ? "active" : ""}>
            {label}
          </Link>
        ))}
        <div class="account">
          <div class="small">{account?.name}</div>
          <div class="small muted">{account?.email}</div>
          <button
            class="small secondary"
            onClick={() => {
              setApiKey(null);
              setSignedIn(false);
              navigate("/", true);
            }}
          >
            Sign out
          </button>
        </div>
      </nav>
      <main class="content">
        <Route path={path} />
      </main>
    </div>
  );
}

render(<App />, document.getElementById("app")!);
