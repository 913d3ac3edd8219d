import { useState } from "preact/hooks";
import { api, type Page } from "../api";
import { ErrorBox, Link, StatusBadge, useLoad } from "../components/ui";
import { dateTime } from "../format";
import { navigate } from "../router";

export interface Agent {
  id: string;
  name: string;
  description: string | null;
  agent_type: string;
  status: "draft" | "deployed";
  current_version: number | null;
  has_undeployed_changes: boolean;
  config: Record<string, unknown>;
  created_at: string;
  updated_at: string;
}

interface Template {
  id: string;
  name: string;
  description: string;
  config: Record<string, unknown>;
}

/** Agents that run offline under `make run`: eSpeak NG voice, PocketSphinx transcriber, no LLM key needed. */
const BLANK: Record<string, unknown> = {
  name: "New agent",
  system_prompt: "You are a helpful voice assistant. Keep replies short.",
  first_message: "Hello! How can I help you today?",
  voice: { provider: "espeak", voice_id: "en-us" },
  transcriber: { provider: "pocketsphinx", model: "en-us", language: "en" },
};

export function Agents() {
  const [agents, error, reload] = useLoad(() => api<Page<Agent>>("/agents", { query: { limit: 100 } }));
  const [templates] = useLoad(() => api<{ data: Template[] }>("/agents/templates"));
  const [actionError, setActionError] = useState<unknown>(null);
  const [template, setTemplate] = useState("blank");

  async function act(run: () => Promise<unknown>) {
    setActionError(null);
    try {
      await run();
      reload();
    } catch (err) {
      setActionError(err);
    }
  }

  async function create() {
    const chosen = templates?.data.find((t) => t.id === template);
    const config = chosen ? { ...chosen.config } : { ...BLANK };
    await act(async () => {
      const agent = await api<Agent>("/agents", { method: "POST", body: config });
      navigate(`/agents/${agent.id}`);
    });
  }

  return (
    <section>
      <header class="page-head">
        <h1>Agents</h1>
        <div class="row">
          <select aria-label="template" value={template} onChange={(e) => setTemplate((e.target as HTMLSelectElement).value)}>
            <option value="blank">Blank (offline voice)</option>
            {templates?.data.map((t) => (
              <option key={t.id} value={t.id} title={t.description}>
                {t.name}
              </option>
            ))}
          </select>
          <button data-testid="create-agent" onClick={create}>
            Create agent
          </button>
        </div>
      </header>
      <ErrorBox error={error || actionError} />
      <table class="list" data-testid="agent-list">
        <thead>
          <tr>
            <th>Name</th>
            <th>Status</th>
            <th>Version</th>
            <th>Updated</th>
            <th />
          </tr>
        </thead>
        <tbody>
          {agents?.data.map((agent) => (
            <tr key={agent.id}>
              <td>
                <Link href={`/agents/${agent.id}`}>{agent.name}</Link>
                <div class="muted small">{agent.id}</div>
              </td>
              <td>
                <StatusBadge status={agent.status} />
                {agent.has_undeployed_changes && <span class="badge badge-warn">undeployed changes</span>}
              </td>
              <td>{agent.current_version ?? "–"}</td>
              <td>{dateTime(agent.updated_at)}</td>
              <td class="actions">
                <button class="small" onClick={() => act(() => api(`/agents/${agent.id}/deploy`, { method: "POST" }))}>
                  Deploy
                </button>
                <button
                  class="small secondary"
                  disabled={agent.status !== "deployed"}
                  onClick={() => navigate(`/talk/${agent.id}`)}
                >
                  Talk
                </button>
                <button
                  class="small secondary"
                  onClick={() => act(() => api(`/agents/${agent.id}/clone`, { method: "POST", body: {} }))}
                >
                  Clone
                </button>
                <button
                  class="small danger"
                  onClick={() =>
                    confirm(`Delete ${agent.name}?`) && act(() => api(`/agents/${agent.id}`, { method: "DELETE" }))
                  }
                >
                  Delete
                </button>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      {agents && !agents.data.length && <p class="muted">No agents yet: create one from a template.</p>}
    </section>
  );
}
