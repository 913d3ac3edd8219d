// Protocol v1 of the voice WebSocket (docs/protocol.md). Money comes as decimal strings (docs/api.md, "Money").
import type { Amount } from "../money";

export const SAMPLE_RATE = 16_000;
export const FRAME_MS = 200;
export const FRAME_SAMPLES = (SAMPLE_RATE * FRAME_MS) / 1000; // 3,200 samples = 6,400 bytes
export const MIN_CHUNK_SAMPLES = (SAMPLE_RATE * 80) / 1000; // shorter chunks must end the utterance

export interface Latency {
  endpointing_ms?: number | null;
  stt_ms?: number | null;
  retrieval_ms?: number | null;
  llm_first_token_ms?: number | null;
  tts_first_byte_ms?: number | null;
  first_audio_ms?: number | null;
  llm_total_ms?: number | null;
  total_ms?: number | null;
  first_audio_before_llm_end?: boolean | null;
}

export interface TurnCost {
  stt?: Amount;
  llm?: Amount;
  tts?: Amount;
  total?: Amount;
}

export type ServerFrame =
  | { type: "ready"; conversation_id: string; agent_id: string | null; agent_version: number; resumed: boolean }
  | { type: "transcript"; turn_id: string; role: "user"; text: string; final: boolean }
  | { type: "agent_text"; turn_id: string; delta: string }
  | { type: "audio"; turn_id: string; seq: number; encoding: string; sample_rate: number; data: string }
  | {
      type: "turn_end";
      turn_id: string;
      seq: number;
      status: string;
      user_text?: string | null;
      agent_text?: string;
      latency?: Latency;
      usage?: Record<string, unknown>;
      cost?: TurnCost;
    }
  | { type: "interrupted"; turn_id: string; heard_text?: string }
  | { type: "error"; code: string; message: string; details?: unknown }
  | { type: "ended"; reason: string; [field: string]: unknown }
  | { type: "pong" };

export interface WaterfallStep {
  key: keyof Latency;
  label: string;
  ms: number;
  start: number; // ms from the end of the caller's speech
}

const STEPS: [keyof Latency, string][] = [
  ["stt_ms", "STT"],
  ["retrieval_ms", "retrieval"],
  ["llm_first_token_ms", "LLM first token"],
  ["tts_first_byte_ms", "TTS first byte"],
];

/** The turn's stages laid end to end after endpointing, plus "first audio" measured from the turn's start. */
export function waterfall(latency: Latency | undefined | null): { steps: WaterfallStep[]; firstAudio: number | null } {
  const steps: WaterfallStep[] = [];
  if (!latency) return { steps, firstAudio: null };
  const endpointing = numberOr(latency.endpointing_ms);
  let cursor = 0;
  if (endpointing !== null) {
    steps.push({ key: "endpointing_ms", label: "endpointing", ms: endpointing, start: 0 });
    cursor = endpointing;
  }
  for (const [key, label] of STEPS) {
    const ms = numberOr(latency[key] as number | null | undefined);
    if (ms === null) continue;
    steps.push({ key, label, ms, start: cursor });
    cursor += ms;
  }
  const first = numberOr(latency.first_audio_ms);
  return { steps, firstAudio: first === null ? null : (endpointing ?? 0) + first };
}

function numberOr(value: number | null | undefined): number | null {
  return typeof value === "number" && Number.isFinite(value) ? value : null;
}
