import { useState } from "preact/hooks";
import { api, ApiError, type Page } from "../api";
import { ErrorBox, Field, useLoad } from "../components/ui";
import { dateTime } from "../format";
import type { Agent } from "./Agents";

export interface PublishableKey {
  id: string;
  name: string;
  key: string;
  agent_ids: string[];
  allowed_origins: string[];
  visitor_conversations_per_hour: number;
  active: boolean;
  created_at: string;
  revoked_at: string | null;
}

/** The snippet a business pastes into its site: the widget script, a publishable key, one agent. */
export function snippet(key: PublishableKey, agentId: string): string {
  const origin = window.location.origin;
  return `<script src="${origin}/widget.js" data-airies-key="${key.key}" data-agent-id="${agentId}" async></script>`;
}

export function Widget() {
  const [keys, error, reload] = useLoad(() => api<{ data: PublishableKey[] }>("/publishable-keys"));
  const [agents] = useLoad(() => api<Page<Agent>>("/agents", { query: { limit: 100, status: "deployed" } }));
  const [name, setName] = useState("Website widget");
  const [agentIds, setAgentIds] = useState<string[]>([]);
  const [origins, setOrigins] = useState("");
  const [perHour, setPerHour] = useState(10);
  const [problems, setProblems] = useState<Record<string, string>>({});
  const [formError, setFormError] = useState<unknown>(null);

  async function create(event: Event) {
    event.preventDefault();
    setProblems({});
    setFormError(null);
    try {
      await api<PublishableKey>("/publishable-keys", {
        method: "POST",
        body: {
          name,
          agent_ids: agentIds,
          allowed_origins: origins
            .split(/[\s,]+/)
            .map((o) => o.trim())
            .filter(Boolean),
          visitor_conversations_per_hour: perHour,
        },
      });
      reload();
    } catch (err) {
      setFormError(err);
      if (err instanceof ApiError) setProblems(err.fieldProblems());
    }
  }

  return (
    <section>
      <header class="page-head">
        <h1>Website widget</h1>
      </header>
      <p class="muted">
        A publishable key lets visitors of the sites you name call the agents you name, and nothing else: it cannot
        read or change anything in your account. Your secret API key never leaves this dashboard.
      </p>
      <form class="panel" onSubmit={create} data-testid="publishable-key-form">
        <Field name="name" label="Name" problem={problems.name}>
          <input name="pk_name" value={name} onInput={(e) => setName((e.target as HTMLInputElement).value)} />
        </Field>
        <Field name="agent_ids" label="Agents visitors may call" problem={problems.agent_ids}>
          <div>
            {agents?.data.map((agent) => (
              <label class="check" key={agent.id}>
                <input
                  type="checkbox"
                  value={agent.id}
                  checked={agentIds.includes(agent.id)}
                  onChange={(e) =>
                    setAgentIds((all) =>
                      (e.target as HTMLInputElement).checked ? [...all, agent.id] : all.filter((a) => a !== agent.id),
                    )
                  }
                />
                {agent.name}
              </label>
            ))}
            {agents && !agents.data.length && <span class="muted">Deploy an agent first.</span>}
          </div>
        </Field>
        <Field
          name="allowed_origins"
          label="Web origins"
          problem={problems.allowed_origins}
          hint="e.g. https://www.example.com (scheme, host and port; one per line)"
        >
          <textarea name="origins" rows={2} value={origins} onInput={(e) => setOrigins((e.target as HTMLTextAreaElement).value)} />
        </Field>
        <Field name="visitor_conversations_per_hour" label="Calls per visitor per hour" problem={problems.visitor_conversations_per_hour}>
          <input type="number" min={1} value={perHour} onInput={(e) => setPerHour(Number((e.target as HTMLInputElement).value))} />
        </Field>
        <button type="submit">Create publishable key</button>
        <ErrorBox error={formError} />
      </form>
      <ErrorBox error={error} />
      <h2>Publishable keys</h2>
      {keys?.data.map((key) => (
        <div class="panel" key={key.id} data-testid="publishable-key">
          <div class="row spread">
            <strong>{key.name}</strong>
            <span class="muted small">
              {key.active ? `created ${dateTime(key.created_at)}` : `revoked ${dateTime(key.revoked_at)}`}
            </span>
            {key.active && (
              <button
                class="small danger"
                onClick={async () => {
                  await api(`/publishable-keys/${key.id}`, { method: "DELETE" });
                  reload();
                }}
              >
                Revoke
              </button>
            )}
          </div>
          <div class="small">
            origins: {key.allowed_origins.join(", ")} · {key.visitor_conversations_per_hour} calls per visitor per hour
          </div>
          {key.active &&
            key.agent_ids.map((agentId) => (
              <pre class="snippet" key={agentId}>
                {snippet(key, agentId)}
              </pre>
            ))}
        </div>
      ))}
      {keys && !keys.data.length && <p class="muted">No publishable key yet.</p>}
    </section>
  );
}
