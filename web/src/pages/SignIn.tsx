import { useEffect, useState } from "preact/hooks";
import { api, appConfig, type AppConfig, setApiKey } from "../api";
import { ErrorBox } from "../components/ui";

export function SignIn({ onSignedIn }: { onSignedIn: () => void }) {
  const [key, setKey] = useState("");
  const [config, setConfig] = useState<AppConfig | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  useEffect(() => {
    appConfig().then(setConfig, () => setConfig(null));
  }, []);

  async function signIn(candidate: string) {
    setBusy(true);
    setError(null);
    try {
      await api("/accounts/me", { key: candidate.trim() });
      setApiKey(candidate.trim());
      onSignedIn();
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  }

  return (
    <main class="signin">
      <h1>Airies</h1>
      <p class="muted">Sign in with an API key. It is kept for this browser tab only.</p>
      <form
        onSubmit={(event) => {
          event.preventDefault();
          void signIn(key);
        }}
      >
        <input
          type="password"
          name="api_key"
          placeholder="ak_live_…"
          autocomplete="off"
          value={key}
          onInput={(event) => setKey((event.target as HTMLInputElement).value)}
        />
        <button type="submit" disabled={busy || !key.trim()}>
          Sign in
        </button>
      </form>
      {config?.stage === "local" && config.dev_api_key && (
        <button class="secondary" data-testid="dev-signin" disabled={busy} onClick={() => signIn(config.dev_api_key!)}>
          Sign in with the local dev key
        </button>
      )}
      <ErrorBox error={error} />
    </main>
  );
}
