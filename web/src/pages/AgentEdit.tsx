import { useEffect, useRef, useState } from "preact/hooks";
import { api, ApiError, type Page } from "../api";
import { ErrorBox, Field, Link, StatusBadge, useLoad } from "../components/ui";
import { dateTime } from "../format";
import { navigate } from "../router";
import type { Agent } from "./Agents";

type Config = Record<string, unknown>;
type Kind = "text" | "textarea" | "number" | "checkbox" | "list" | "select";

interface FieldSpec {
  path: string;
  label: string;
  kind: Kind;
  options?: string[];
  hint?: string;
}

const FIELDS: [string, FieldSpec[]][] = [
  [
    "Basics",
    [
      { path: "name", label: "Name", kind: "text" },
      { path: "description", label: "Description", kind: "textarea" },
      { path: "agent_type", label: "Type", kind: "select", options: ["inbound", "outbound", "web"] },
      { path: "system_prompt", label: "System prompt", kind: "textarea" },
      { path: "first_message", label: "First message", kind: "text" },
      {
        path: "first_message_mode",
        label: "First message mode",
        kind: "select",
        options: ["assistant_speaks_first", "assistant_waits_for_user", "assistant_generates_first"],
      },
    ],
  ],
  [
    "Language model",
    [
      { path: "llm.provider", label: "Provider", kind: "text" },
      { path: "llm.model", label: "Model", kind: "text" },
      { path: "llm.temperature", label: "Temperature", kind: "number" },
      { path: "llm.max_tokens", label: "Max tokens", kind: "number" },
    ],
  ],
  [
    "Voice and transcriber",
    [
      { path: "voice.provider", label: "Voice provider", kind: "text", hint: "espeak runs offline" },
      { path: "voice.voice_id", label: "Voice", kind: "text" },
      { path: "transcriber.provider", label: "Transcriber", kind: "text", hint: "pocketsphinx runs offline" },
      { path: "transcriber.model", label: "Transcriber model", kind: "text" },
      { path: "transcriber.language", label: "Language", kind: "text" },
      { path: "transcriber.keywords", label: "Keywords", kind: "list", hint: "comma-separated" },
    ],
  ],
  [
    "Call behaviour",
    [
      { path: "end_call_phrases", label: "End-call phrases", kind: "list", hint: "comma-separated" },
      { path: "max_duration_seconds", label: "Max duration (s)", kind: "number" },
      { path: "silence_timeout_seconds", label: "Silence timeout (s)", kind: "number" },
      { path: "interruption.enabled", label: "Caller may interrupt", kind: "checkbox" },
      { path: "endpointing.silence_ms", label: "End of speech after silence (ms)", kind: "number" },
      { path: "recording_enabled", label: "Record calls", kind: "checkbox" },
    ],
  ],
];

function getPath(config: Config, path: string): unknown {
  return path.split(".").reduce<unknown>((node, key) => (node as Config | undefined)?.[key], config);
}

function setPath(config: Config, path: string, value: unknown): Config {
  const [head, ...rest] = path.split(".");
  if (!rest.length) return { ...config, [head]: value };
  return { ...config, [head]: setPath((config[head] as Config) ?? {}, rest.join("."), value) };
}

interface Problem {
  field: string;
  message: string;
}

interface Version {
  version: number;
  created_at: string;
  config: Config;
}

export function AgentEdit({ id }: { id: string }) {
  const [agent, loadError, reload] = useLoad(() => api<Agent>(`/agents/${id}`), [id]);
  const [versions, , reloadVersions] = useLoad(() => api<{ data: Version[] }>(`/agents/${id}/versions`), [id]);
  const [kbs] = useLoad(() => api<Page<{ id: string; name: string }>>("/knowledge-bases", { query: { limit: 100 } }));
  const [draft, setDraft] = useState<Config | null>(null);
  const [problems, setProblems] = useState<Record<string, string>>({});
  const [error, setError] = useState<unknown>(null);
  const [saved, setSaved] = useState<string | null>(null);
  const validation = useRef(0);

  useEffect(() => {
    if (agent) setDraft(agent.config);
  }, [agent]);

  // Validate the draft as it changes: the server's rules (known models, voices, owned knowledge bases).
  useEffect(() => {
    if (!draft) return;
    const ticket = ++validation.current;
    const timer = window.setTimeout(async () => {
      try {
        const result = await api<{ valid: boolean; problems: Problem[] }>("/agents/validate", {
          method: "POST",
          body: draft,
        });
        if (ticket === validation.current) setProblems(byField(result.problems));
      } catch (err) {
        if (ticket === validation.current && err instanceof ApiError) setProblems(err.fieldProblems());
      }
    }, 300);
    return () => window.clearTimeout(timer);
  }, [draft]);

  if (loadError) return <ErrorBox error={loadError} />;
  if (!agent || !draft) return <p class="muted">Loading…</p>;

  const update = (path: string, value: unknown) => {
    setSaved(null);
    setDraft(setPath(draft, path, value));
  };

  async function save(): Promise<boolean> {
    setError(null);
    try {
      await api<Agent>(`/agents/${id}`, { method: "PUT", body: draft });
      setSaved("Saved.");
      reload();
      return true;
    } catch (err) {
      setError(err);
      if (err instanceof ApiError) setProblems({ ...problems, ...err.fieldProblems() });
      return false;
    }
  }

  async function deploy() {
    if (!(await save())) return;
    try {
      const version = await api<Version>(`/agents/${id}/deploy`, { method: "POST" });
      setSaved(`Deployed version ${version.version}.`);
      reload();
      reloadVersions();
    } catch (err) {
      setError(err);
    }
  }

  const selectedKbs = (draft.knowledge_base_ids as string[] | undefined) ?? [];
  return (
    <section>
      <header class="page-head">
        <div>
          <h1>{agent.name}</h1>
          <div class="muted small">
            {agent.id} · <StatusBadge status={agent.status} /> {agent.current_version ? `v${agent.current_version}` : ""}
          </div>
        </div>
        <div class="row">
          <button class="secondary" onClick={save}>
            Save
          </button>
          <button data-testid="deploy-agent" onClick={deploy}>
            Save and deploy
          </button>
          {agent.status === "deployed" && (
            <Link class="button" href={`/talk/${agent.id}`}>
              Talk
            </Link>
          )}
        </div>
      </header>
      <ErrorBox error={error} />
      {saved && (
        <div class="notice" data-testid="saved">
          {saved}
        </div>
      )}
      <div class="form-grid">
        {FIELDS.map(([title, fields]) => (
          <fieldset key={title}>
            <legend>{title}</legend>
            {fields.map((spec) => (
              <Field key={spec.path} name={spec.path} label={spec.label} problem={problems[spec.path]} hint={spec.hint}>
                {input(spec, getPath(draft, spec.path), (value) => update(spec.path, value))}
              </Field>
            ))}
          </fieldset>
        ))}
        <fieldset>
          <legend>Knowledge bases</legend>
          {kbs?.data.length ? (
            kbs.data.map((kb) => (
              <label class="check" key={kb.id}>
                <input
                  type="checkbox"
                  checked={selectedKbs.includes(kb.id)}
                  onChange={(e) =>
                    update(
                      "knowledge_base_ids",
                      (e.target as HTMLInputElement).checked
                        ? [...selectedKbs, kb.id]
                        : selectedKbs.filter((kbId) => kbId !== kb.id),
                    )
                  }
                />
                {kb.name}
              </label>
            ))
          ) : (
            <p class="muted">No knowledge bases yet.</p>
          )}
          {Object.entries(problems)
            .filter(([field]) => field.startsWith("knowledge_base_ids"))
            .map(([field, message]) => (
              <span class="problem" key={field}>
                {message}
              </span>
            ))}
        </fieldset>
      </div>
      <h2>Versions</h2>
      <table class="list" data-testid="versions">
        <thead>
          <tr>
            <th>Version</th>
            <th>Deployed</th>
            <th>Model</th>
            <th>Voice</th>
          </tr>
        </thead>
        <tbody>
          {versions?.data.map((v) => (
            <tr key={v.version}>
              <td>v{v.version}</td>
              <td>{dateTime(v.created_at)}</td>
              <td>{String(getPath(v.config, "llm.model") ?? "")}</td>
              <td>{`${getPath(v.config, "voice.provider")}/${getPath(v.config, "voice.voice_id")}`}</td>
            </tr>
          ))}
        </tbody>
      </table>
      <p>
        <button
          class="secondary"
          onClick={async () => {
            const copy = await api<Agent>(`/agents/${id}/clone`, { method: "POST", body: {} });
            navigate(`/agents/${copy.id}`);
          }}
        >
          Clone this agent
        </button>
      </p>
    </section>
  );
}

function byField(problems: Problem[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const problem of problems) out[problem.field] = problem.message;
  return out;
}

function input(spec: FieldSpec, value: unknown, set: (value: unknown) => void) {
  const name = spec.path;
  switch (spec.kind) {
    case "textarea":
      return (
        <textarea name={name} rows={name === "system_prompt" ? 6 : 2} value={(value as string) ?? ""} onInput={(e) => set((e.target as HTMLTextAreaElement).value || null)} />
      );
    case "number":
      return (
        <input
          name={name}
          type="number"
          step="any"
          value={value === undefined || value === null ? "" : String(value)}
          onInput={(e) => {
            const text = (e.target as HTMLInputElement).value;
            set(text === "" ? null : Number(text));
          }}
        />
      );
    case "checkbox":
      return <input name={name} type="checkbox" checked={Boolean(value)} onChange={(e) => set((e.target as HTMLInputElement).checked)} />;
    case "list":
      return (
        <input
          name={name}
          value={Array.isArray(value) ? value.join(", ") : ""}
          onInput={(e) =>
            set(
              (e.target as HTMLInputElement).value
                .split(",")
                .map((item) => item.trim())
                .filter(Boolean),
            )
          }
        />
      );
    case "select":
      return (
        <select name={name} value={(value as string) ?? ""} onChange={(e) => set((e.target as HTMLSelectElement).value)}>
          {spec.options!.map((option) => (
            <option key={option} value={option}>
              {option.replace(/_/g, " ")}
            </option>
          ))}
        </select>
      );
    default:
      return <input name={name} value={(value as string) ?? ""} onInput={(e) => set((e.target as HTMLInputElement).value)} />;
  }
}
