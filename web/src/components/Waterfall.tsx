import { type Latency, waterfall } from "../call/protocol";

const COLOURS: Record<string, string> = {
  endpointing_ms: "#94a3b8",
  stt_ms: "#60a5fa",
  retrieval_ms: "#a78bfa",
  llm_first_token_ms: "#f59e0b",
  tts_first_byte_ms: "#34d399",
};

/** One turn's latency: each stage as a bar on a shared time axis, and when the first audio left. */
export function Waterfall({ latency }: { latency: Latency | null | undefined }) {
  const { steps, firstAudio } = waterfall(latency);
  if (!steps.length && firstAudio === null) return <p class="muted">No latency recorded for this turn.</p>;
  const end = Math.max(firstAudio ?? 0, ...steps.map((s) => s.start + s.ms), 1);
  const pct = (value: number) => `${((100 * value) / end).toFixed(2)}%`;
  return (
    <div class="waterfall" data-testid="waterfall">
      {steps.map((step) => (
        <div class="wf-row" key={step.key}>
          <span class="wf-label">{step.label}</span>
          <span class="wf-track">
            <span
              class="wf-bar"
              style={{ left: pct(step.start), width: pct(Math.max(step.ms, end / 300)), background: COLOURS[step.key] }}
            />
          </span>
          <span class="wf-value" data-testid="waterfall-value">
            {Math.round(step.ms)} ms
          </span>
        </div>
      ))}
      {firstAudio !== null && (
        <div class="wf-row wf-total">
          <span class="wf-label">first audio</span>
          <span class="wf-track">
            <span class="wf-marker" style={{ left: pct(firstAudio) }} />
          </span>
          <span class="wf-value" data-testid="waterfall-first-audio">
            {Math.round(firstAudio)} ms
          </span>
        </div>
      )}
    </div>
  );
}
