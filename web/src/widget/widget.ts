// The embeddable call widget. A business puts on its own site:
//   <script src="https://<airies host>/widget.js" data-airies-key="pk_live_..." data-agent-id="agt_..." async></script>
// It starts conversations with the publishable key (which can do nothing else) and talks over protocol v1.
import type { ServerFrame } from "../call/protocol";
import { CallSession } from "../call/session";

const STYLE = `
:host { all: initial; position: fixed; right: 20px; bottom: 20px; z-index: 2147483000;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; font-size: 14px; }
.panel { width: 300px; max-height: 360px; overflow-y: auto; background: white; color: #0f172a; border-radius: 12px;
  box-shadow: 0 8px 30px rgba(15, 23, 42, .25); padding: 12px; margin-bottom: 10px; display: none; }
.panel.open { display: block; }
.line { margin: 4px 0; padding: 6px 8px; border-radius: 8px; background: #f1f5f9; }
.line.user { background: #dbeafe; }
.status { font-size: 12px; color: #64748b; margin-bottom: 6px; }
button { border: 0; border-radius: 999px; padding: 12px 18px; font: inherit; font-weight: 600; cursor: pointer;
  color: white; background: #2563eb; box-shadow: 0 4px 14px rgba(37, 99, 235, .4); float: right; }
button.live { background: #dc2626; }
`;

interface WidgetConfig {
  key: string;
  agentId: string;
  apiBase: string;
  label: string;
}

function readConfig(script: HTMLScriptElement | null): WidgetConfig | null {
  if (!script) return null;
  const key = script.dataset.airiesKey ?? "";
  const agentId = script.dataset.agentId ?? "";
  if (!key.startsWith("pk_") || !agentId) {
    console.error("Airies widget: data-airies-key (a publishable key, pk_...) and data-agent-id are required");
    return null;
  }
  const apiBase = script.dataset.apiBase ?? new URL(script.src, window.location.href).origin;
  return { key, agentId, apiBase, label: script.dataset.label ?? "Talk to us" };
}

export function mountWidget(config: WidgetConfig): HTMLElement {
  const host = document.createElement("div");
  host.setAttribute("data-airies-widget", "");
  const root = host.attachShadow({ mode: "open" });
  root.innerHTML = `<style>${STYLE}</style><div class="panel"><div class="status"></div><div class="lines"></div></div>
    <button type="button"></button>`;
  document.body.appendChild(host);
  const panel = root.querySelector(".panel") as HTMLDivElement;
  const status = root.querySelector(".status") as HTMLDivElement;
  const lines = root.querySelector(".lines") as HTMLDivElement;
  const button = root.querySelector("button") as HTMLButtonElement;
  button.textContent = config.label;
  let session: CallSession | null = null;
  const agentLines = new Map<string, HTMLDivElement>();

  const say = (text: string, role: "user" | "agent", turnId: string) => {
    let line = role === "agent" ? agentLines.get(turnId) : undefined;
    if (!line) {
      line = document.createElement("div");
      line.className = `line ${role}`;
      line.dataset.role = role;
      lines.appendChild(line);
      if (role === "agent") agentLines.set(turnId, line);
    }
    line.textContent = role === "agent" && line.textContent ? `${line.textContent} ${text}` : text;
    panel.scrollTop = panel.scrollHeight;
  };

  const onFrame = (frame: ServerFrame) => {
    if (frame.type === "transcript") say(frame.text, "user", frame.turn_id);
    else if (frame.type === "agent_text") say(frame.delta, "agent", frame.turn_id);
  };

  const idle = () => {
    session = null;
    button.classList.remove("live");
    button.textContent = config.label;
  };

  button.addEventListener("click", async () => {
    if (session) {
      session.hangUp();
      return;
    }
    panel.classList.add("open");
    lines.textContent = "";
    agentLines.clear();
    status.textContent = "connecting…";
    button.classList.add("live");
    button.textContent = "Hang up";
    try {
      const response = await fetch(`${config.apiBase}/api/v1/widget/${encodeURIComponent(config.key)}/conversations`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ agent_id: config.agentId }),
      });
      const body = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(body?.error?.message ?? `HTTP ${response.status}`);
      session = new CallSession({
        wsUrl: body.ws_url,
        onFrame,
        onState: (state, detail) => {
          status.textContent = state === "live" ? "connected: speak now" : `${state}${detail ? `: ${detail}` : ""}`;
          host.dataset.state = state;
          if (state === "ended" || state === "failed") idle();
        },
        onPlayback: (stats) => {
          host.dataset.outputPeak = stats.maxPeak.toFixed(3);
        },
      });
      await session.start();
    } catch (error) {
      status.textContent = `could not start the call: ${error instanceof Error ? error.message : String(error)}`;
      host.dataset.state = "failed";
      idle();
    }
  });
  return host;
}

const config = readConfig(document.currentScript as HTMLScriptElement | null);
if (config) {
  if (document.body) mountWidget(config);
  else document.addEventListener("DOMContentLoaded", () => mountWidget(config));
}
