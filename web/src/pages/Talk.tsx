import { useEffect, useRef, useState } from "preact/hooks";
import { api, type Page } from "../api";
import type { Latency, ServerFrame, TurnCost } from "../call/protocol";
import { type CallState, CallSession, type PlaybackStats } from "../call/session";
import { Waterfall } from "../components/Waterfall";
import { ErrorBox, Link, useLoad } from "../components/ui";
import { usd } from "../money";
import { navigate } from "../router";
import type { Agent } from "./Agents";

interface Line {
  turnId: string;
  role: "user" | "agent";
  text: string;
  interrupted?: boolean;
}

interface TurnDone {
  turnId: string;
  status: string;
  latency?: Latency;
  cost?: TurnCost;
}

interface Started {
  id: string;
  ws_url: string;
}

export function Talk({ agentId }: { agentId?: string }) {
  const [agents, loadError] = useLoad(() =>
    api<Page<Agent>>("/agents", { query: { limit: 100, status: "deployed" } }),
  );
  const [selected, setSelected] = useState(agentId ?? "");
  const [state, setState] = useState<CallState>("idle");
  const [detail, setDetail] = useState<string | undefined>();
  const [lines, setLines] = useState<Line[]>([]);
  const [turns, setTurns] = useState<TurnDone[]>([]);
  const [cost, setCost] = useState("0");
  const [playback, setPlayback] = useState<PlaybackStats | null>(null);
  const [bargeIns, setBargeIns] = useState<{ turnId: string | null; playedMs: number }[]>([]);
  const [conversationId, setConversationId] = useState<string | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [typed, setTyped] = useState("");
  const [microphone, setMicrophone] = useState(true);
  const [micLevel, setMicLevel] = useState(0);
  const session = useRef<CallSession | null>(null);
  const interruptedTurns = useRef(new Set<string>());

  useEffect(() => {
    if (!selected && agents?.data.length) setSelected(agents.data[0].id);
  }, [agents]);
  useEffect(() => () => session.current?.close(), []);

  /** The agent's line of an interrupted turn shows only what the caller heard (no line when nothing was heard, as
   * when no text had come yet); its waterfall says interrupted. */
  function markInterrupted(turnId: string, heard: string | undefined) {
    interruptedTurns.current.add(turnId);
    setLines((all) => {
      const index = all.findIndex((line) => line.role === "agent" && line.turnId === turnId);
      if (heard === "") return index < 0 ? all : all.filter((_, i) => i !== index);
      if (index < 0) return heard ? [...all, { turnId, role: "agent", text: heard, interrupted: true }] : all;
      const next = all.slice();
      next[index] = { ...next[index], text: heard ?? next[index].text, interrupted: true };
      return next;
    });
    setTurns((all) => all.map((turn) => (turn.turnId === turnId ? { ...turn, status: "interrupted" } : turn)));
  }

  function onFrame(frame: ServerFrame) {
    if (frame.type === "transcript") {
      setLines((all) => {
        // One line per turn: a later transcript of the same turn replaces the earlier one.
        const index = all.findIndex((line) => line.role === "user" && line.turnId === frame.turn_id);
        if (index < 0) return [...all, { turnId: frame.turn_id, role: "user", text: frame.text }];
        const next = all.slice();
        next[index] = { ...next[index], text: frame.text };
        return next;
      });
    } else if (frame.type === "agent_text") {
      setLines((all) => {
        const index = all.findIndex((line) => line.role === "agent" && line.turnId === frame.turn_id);
        if (interruptedTurns.current.has(frame.turn_id)) return all; // cut: the caller never hears the rest
        if (index < 0) return [...all, { turnId: frame.turn_id, role: "agent", text: frame.delta }];
        const next = all.slice();
        next[index] = { ...next[index], text: `${next[index].text} ${frame.delta}`.trim() };
        return next;
      });
    } else if (frame.type === "interrupted") {
      markInterrupted(frame.turn_id, frame.heard_text);
    } else if (frame.type === "turn_end") {
      const turnId = frame.turn_id;
      // An `interrupted` that came first (the barge-in landed before the turn ended) keeps the turn interrupted.
      const status = interruptedTurns.current.has(turnId) ? "interrupted" : frame.status;
      setTurns((all) => [...all, { turnId, status, latency: frame.latency, cost: frame.cost }]);
      // agent_text: what was received; an `interrupted` frame that came first (a later cut) already says less
      if (frame.status === "interrupted" && !interruptedTurns.current.has(turnId)) {
        markInterrupted(turnId, frame.agent_text);
      }
    } else if (frame.type === "error" && frame.code !== "turn_not_current") {
      // turn_not_current: a barge-in that reached the server after the next turn began; dropped, nothing to show.
      setDetail(`${frame.code}: ${frame.message}`);
    }
  }

  async function call() {
    setError(null);
    setLines([]);
    setTurns([]);
    interruptedTurns.current = new Set();
    setCost("0");
    setBargeIns([]);
    setPlayback(null);
    try {
      const started = await api<Started>("/conversations", { method: "POST", body: { agent_id: selected } });
      setConversationId(started.id);
      const call = new CallSession({
        wsUrl: started.ws_url,
        microphone,
        onFrame,
        onState: (next, why) => {
          setState(next);
          setDetail(why);
        },
        onPlayback: setPlayback,
        onMicLevel: setMicLevel,
        onCost: setCost,
        onBargeIn: (turnId, playedMs) => setBargeIns((all) => [...all, { turnId, playedMs }]),
      });
      session.current = call;
      await call.start();
    } catch (err) {
      setError(err);
      setState("failed");
    }
  }

  const live = state === "live" || state === "connecting";
  return (
    <section class="talk">
      <header class="page-head">
        <h1>Talk</h1>
        <div class="row">
          <select
            aria-label="agent"
            value={selected}
            disabled={live}
            onChange={(e) => {
              const id = (e.target as HTMLSelectElement).value;
              setSelected(id);
              navigate(`/talk/${id}`, true);
            }}
          >
            {agents?.data.map((agent) => (
              <option key={agent.id} value={agent.id}>
                {agent.name} (v{agent.current_version})
              </option>
            ))}
          </select>
          <label class="check">
            <input type="checkbox" checked={microphone} disabled={live} onChange={(e) => setMicrophone((e.target as HTMLInputElement).checked)} />
            microphone
          </label>
          {live ? (
            <button class="danger" data-testid="hangup-button" onClick={() => session.current?.hangUp()}>
              Hang up
            </button>
          ) : (
            <button data-testid="call-button" disabled={!selected} onClick={call}>
              Call
            </button>
          )}
        </div>
      </header>
      <ErrorBox error={loadError || error} />
      {agents && !agents.data.length && (
        <p class="muted">
          No deployed agent yet: <Link href="/agents">create and deploy one</Link>.
        </p>
      )}
      <div class="call-status">
        <span data-testid="call-state" class={`state state-${state}`}>
          {state}
        </span>
        {detail && <span class="muted"> {detail}</span>}
        {microphone && (
          <span class="meter" title="microphone level">
            mic <meter min={0} max={0.3} value={micLevel} data-testid="mic-level" />
          </span>
        )}
        <span>
          cost <strong data-testid="running-cost">{usd(cost)}</strong>
        </span>
        <span>
          agent audio peak <strong data-testid="output-peak">{(playback?.maxPeak ?? 0).toFixed(3)}</strong>
        </span>
        {playback?.busy && <span class="speaking">agent speaking</span>}
        {bargeIns.length > 0 && (
          <span data-testid="barge-ins">
            barge-in at {bargeIns.map((b) => `${b.playedMs} ms`).join(", ")}
          </span>
        )}
        {conversationId && (
          <Link href={`/conversations/${conversationId}`}>
            <span data-testid="conversation-link">{conversationId}</span>
          </Link>
        )}
      </div>
      <div class="talk-grid">
        <div>
          <h2>Transcript</h2>
          <ol class="transcript" data-testid="transcript">
            {lines.map((line, index) => (
              <li key={index} class={`line line-${line.role}`} data-role={line.role} data-turn-id={line.turnId}>
                <span class="who">{line.role === "user" ? "You" : "Agent"}</span>{" "}
                <span data-testid="line-text">{line.text}</span>
                {line.interrupted && (
                  <span class="badge badge-warn" data-testid="interrupted">
                    interrupted
                  </span>
                )}
              </li>
            ))}
          </ol>
          <form
            class="row"
            onSubmit={(event) => {
              event.preventDefault();
              session.current?.sendText(typed);
              setTyped("");
            }}
          >
            <input
              name="typed"
              placeholder="Type a turn instead of speaking"
              value={typed}
              disabled={state !== "live"}
              onInput={(e) => setTyped((e.target as HTMLInputElement).value)}
            />
            <button type="submit" disabled={state !== "live" || !typed.trim()}>
              Send
            </button>
          </form>
        </div>
        <div>
          <h2>Latency per turn</h2>
          {turns.map((turn, index) => (
            <div class="turn-latency" key={turn.turnId} data-testid="turn-latency" data-turn-id={turn.turnId}>
              <div class="small">
                turn {index + 1} · <span data-testid="turn-status">{turn.status}</span> · {usd(turn.cost?.total ?? "0")}
              </div>
              <Waterfall latency={turn.latency} />
            </div>
          ))}
          {!turns.length && <p class="muted">Each turn's waterfall appears here as it completes.</p>}
        </div>
      </div>
    </section>
  );
}
