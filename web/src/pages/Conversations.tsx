import { useState } from "preact/hooks";
import { api, type Page } from "../api";
import type { Latency, TurnCost } from "../call/protocol";
import { Waterfall } from "../components/Waterfall";
import { ErrorBox, Link, StatusBadge, useLoad } from "../components/ui";
import { dateTime, seconds } from "../format";
import { type Amount, usd } from "../money";
import type { Agent } from "./Agents";

interface Conversation {
  id: string;
  agent_id: string | null;
  agent_version: number;
  status: string;
  channel: string;
  started_at: string;
  ended_at: string | null;
  end_reason: string | null;
  duration_seconds: number;
  turn_count: number;
  interruption_count: number;
  cost_usd: Amount;
  recording_enabled: boolean;
  analysis?: Analysis | null;
  analysis_status?: string | null;
  metadata: Record<string, unknown>;
}

/** The post-call analysis (docs/analysis.md): each part null when it failed or did not run. */
interface Analysis {
  summary?: string | null;
  structured_data?: Record<string, unknown> | null;
  success_evaluation?: Record<string, unknown> | null;
  cost_usd?: Amount;
  offline?: boolean;
  error?: string;
  reason?: string;
}

interface Turn {
  id: string;
  seq: number;
  input_mode: string;
  user_text: string | null;
  agent_text: string;
  interrupted: boolean;
  status: string;
  latency: Latency;
  cost: TurnCost;
  cost_usd: Amount;
  recording: { caller?: { seconds: number }; agent?: { seconds: number }; error?: string };
  tool_calls?: { name: string; arguments?: unknown; result?: unknown }[];
  started_at: string;
}

interface Cost {
  components: Record<string, string>;
  total: string;
  usage: Record<string, number>;
}

export function Conversations() {
  const [status, setStatus] = useState("");
  const [agentId, setAgentId] = useState("");
  const [extra, setExtra] = useState<Conversation[]>([]);
  const [cursor, setCursor] = useState<string | null>(null);
  const [agents] = useLoad(() => api<Page<Agent>>("/agents", { query: { limit: 100 } }));
  const [page, error] = useLoad(async () => {
    const first = await api<Page<Conversation>>("/conversations", {
      query: { limit: 25, status, agent_id: agentId },
    });
    setExtra([]);
    setCursor(first.next_cursor);
    return first;
  }, [status, agentId]);
  const names = new Map(agents?.data.map((a) => [a.id, a.name]) ?? []);

  async function more() {
    if (!cursor) return;
    const next = await api<Page<Conversation>>("/conversations", {
      query: { limit: 25, status, agent_id: agentId, cursor },
    });
    setExtra((all) => [...all, ...next.data]);
    setCursor(next.next_cursor);
  }

  const rows = [...(page?.data ?? []), ...extra];
  return (
    <section>
      <header class="page-head">
        <h1>Conversations</h1>
        <div class="row">
          <select aria-label="status" value={status} onChange={(e) => setStatus((e.target as HTMLSelectElement).value)}>
            <option value="">any status</option>
            <option value="created">created</option>
            <option value="active">active</option>
            <option value="ended">ended</option>
          </select>
          <select aria-label="agent filter" value={agentId} onChange={(e) => setAgentId((e.target as HTMLSelectElement).value)}>
            <option value="">any agent</option>
            {agents?.data.map((agent) => (
              <option key={agent.id} value={agent.id}>
                {agent.name}
              </option>
            ))}
          </select>
        </div>
      </header>
      <ErrorBox error={error} />
      <table class="list" data-testid="conversation-list">
        <thead>
          <tr>
            <th>Conversation</th>
            <th>Agent</th>
            <th>Status</th>
            <th>Started</th>
            <th>Duration</th>
            <th>Turns</th>
            <th>Cost</th>
          </tr>
        </thead>
        <tbody>
          {rows.map((c) => (
            <tr key={c.id}>
              <td>
                <Link href={`/conversations/${c.id}`}>{c.id}</Link>
              </td>
              <td>{(c.agent_id && names.get(c.agent_id)) ?? c.agent_id ?? "deleted"}</td>
              <td>
                <StatusBadge status={c.status} />
                {c.end_reason && <span class="muted small"> {c.end_reason}</span>}
              </td>
              <td>{dateTime(c.started_at)}</td>
              <td>{seconds(c.duration_seconds)}</td>
              <td>{c.turn_count}</td>
              <td>{usd(c.cost_usd)}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {page && !rows.length && <p class="muted">No conversations match.</p>}
      {cursor && (
        <button class="secondary" onClick={more}>
          Load more
        </button>
      )}
    </section>
  );
}

function AnalysisView({ status, analysis }: { status: string; analysis: Analysis | null }) {
  const evaluation = analysis?.success_evaluation;
  return (
    <div data-testid="conversation-analysis">
      <h2>Analysis</h2>
      <dl class="facts">
        <dt>Status</dt>
        <dd>
          <StatusBadge status={status} />
          {analysis?.offline && <span class="muted small"> offline responder (placeholder content)</span>}
        </dd>
        {(analysis?.error || analysis?.reason) && (
          <>
            <dt>Why</dt>
            <dd>{analysis?.error ?? analysis?.reason}</dd>
          </>
        )}
        {analysis?.summary && (
          <>
            <dt>Summary</dt>
            <dd>{analysis.summary}</dd>
          </>
        )}
        {evaluation && (
          <>
            <dt>Success</dt>
            <dd>
              {"success" in evaluation && String(evaluation.success)}
              {"score" in evaluation && `${String(evaluation.score)} / 10`}
              {"verdict" in evaluation && String(evaluation.verdict)}
              {"reason" in evaluation && <span class="muted"> · {String(evaluation.reason)}</span>}
            </dd>
          </>
        )}
        {analysis?.cost_usd !== undefined && (
          <>
            <dt>Cost</dt>
            <dd>{usd(analysis.cost_usd)}</dd>
          </>
        )}
      </dl>
      {analysis?.structured_data && <pre class="json">{JSON.stringify(analysis.structured_data, null, 2)}</pre>}
    </div>
  );
}

export function ConversationDetail({ id }: { id: string }) {
  const [conversation, error] = useLoad(() => api<Conversation & { turns: Turn[] }>(`/conversations/${id}`), [id]);
  const [cost] = useLoad(() => api<Cost>(`/conversations/${id}/cost`), [id]);
  if (error) return <ErrorBox error={error} />;
  if (!conversation) return <p class="muted">Loading…</p>;
  return (
    <section>
      <header class="page-head">
        <div>
          <h1>Conversation</h1>
          <div class="muted small">{conversation.id}</div>
        </div>
      </header>
      <dl class="facts">
        <dt>Status</dt>
        <dd>
          <StatusBadge status={conversation.status} />
        </dd>
        <dt>End reason</dt>
        <dd data-testid="end-reason">{conversation.end_reason ?? "–"}</dd>
        <dt>Agent</dt>
        <dd>
          {conversation.agent_id ? <Link href={`/agents/${conversation.agent_id}`}>{conversation.agent_id}</Link> : "deleted"} v
          {conversation.agent_version}
        </dd>
        <dt>Started</dt>
        <dd>{dateTime(conversation.started_at)}</dd>
        <dt>Duration</dt>
        <dd>{seconds(conversation.duration_seconds)}</dd>
        <dt>Turns / interruptions</dt>
        <dd>
          {conversation.turn_count} / {conversation.interruption_count}
        </dd>
        <dt>Cost</dt>
        <dd data-testid="conversation-cost">{usd(cost?.total ?? conversation.cost_usd)}</dd>
      </dl>
      {cost && (
        <>
          <h2>Cost breakdown</h2>
          <table class="list compact" data-testid="cost-breakdown">
            <tbody>
              {Object.entries(cost.components).map(([component, amount]) => (
                <tr key={component}>
                  <td>{component}</td>
                  <td>{usd(amount)}</td>
                </tr>
              ))}
              <tr class="total">
                <td>total</td>
                <td>{usd(cost.total)}</td>
              </tr>
            </tbody>
          </table>
          <p class="muted small">
            {cost.usage.stt_seconds} s transcribed · {cost.usage.prompt_tokens} prompt + {cost.usage.completion_tokens}{" "}
            completion tokens · {cost.usage.tts_characters} characters synthesised
          </p>
        </>
      )}
      {conversation.analysis_status && (
        <AnalysisView status={conversation.analysis_status} analysis={conversation.analysis ?? null} />
      )}
      <h2>Transcript</h2>
      <ol class="turns" data-testid="conversation-transcript">
        {conversation.turns.map((turn) => (
          <li key={turn.id} class="turn">
            {turn.user_text && (
              <p class="line line-user">
                <span class="who">Caller</span> {turn.user_text}
              </p>
            )}
            {turn.agent_text && (
              <p class="line line-agent">
                <span class="who">Agent</span> {turn.agent_text}
                {turn.interrupted && <span class="badge badge-warn">interrupted</span>}
              </p>
            )}
            {turn.tool_calls?.length ? (
              <div class="tool-calls">
                {turn.tool_calls.map((call, index) => (
                  <code key={index}>
                    {call.name}({JSON.stringify(call.arguments ?? {})})
                  </code>
                ))}
              </div>
            ) : null}
            <details>
              <summary>
                turn {turn.seq} · {turn.input_mode} · {turn.status} · {usd(turn.cost_usd)}
              </summary>
              <Waterfall latency={turn.latency} />
              <Recording conversationId={conversation.id} turn={turn} />
            </details>
          </li>
        ))}
      </ol>
    </section>
  );
}

function Recording({ conversationId, turn }: { conversationId: string; turn: Turn }) {
  const [urls, setUrls] = useState<Record<string, string>>({});
  const [error, setError] = useState<unknown>(null);
  if (turn.recording?.error) return <p class="muted small">Recording failed for this turn.</p>;
  const sides = (["caller", "agent"] as const).filter((side) => turn.recording?.[side]);
  if (!sides.length) return null;
  async function load(side: string) {
    try {
      const link = await api<{ url: string }>(`/conversations/${conversationId}/turns/${turn.id}/recording/${side}`);
      setUrls((all) => ({ ...all, [side]: link.url }));
    } catch (err) {
      setError(err);
    }
  }
  return (
    <div class="recordings">
      {sides.map((side) =>
        urls[side] ? (
          <audio key={side} controls src={urls[side]} data-testid={`recording-${side}`} />
        ) : (
          <button key={side} class="small secondary" onClick={() => load(side)}>
            Play {side} recording
          </button>
        ),
      )}
      <ErrorBox error={error} />
    </div>
  );
}
