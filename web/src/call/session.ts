// One call over protocol v1: microphone capture (AudioWorklet, 16 kHz PCM16, 200 ms frames), the agent's audio
// played from a jitter buffer, barge-in with the exact played_ms, typed turns. Used by the Talk page and the widget.
import { addDecimal } from "../money";
import { base64ToBytes, bytesToBase64, bytesToPcm16, floatToPcm16, Framer, pcm16ToBytes, pcm16ToFloat, rms } from "./pcm";
import { FRAME_SAMPLES, SAMPLE_RATE, type ServerFrame } from "./protocol";
import { StreamResampler } from "./resample";
import { CAPTURE_PROCESSOR, loadWorklets, PLAYBACK_PROCESSOR } from "./worklets";

export type CallState = "idle" | "connecting" | "live" | "ended" | "failed";

export interface CallOptions {
  wsUrl: string;
  microphone?: boolean; // false: typed turns only
  /** Caller speech (RMS, 0..1) above this while the agent speaks counts toward a barge-in. */
  bargeInLevel?: number;
  /** How long the caller must speak over the agent before it yields. */
  bargeInMs?: number;
  prebufferMs?: number;
  onFrame?: (frame: ServerFrame) => void;
  onState?: (state: CallState, detail?: string) => void;
  onPlayback?: (stats: PlaybackStats) => void;
  onBargeIn?: (turnId: string | null, playedMs: number) => void;
  onCost?: (total: string) => void;
  /** The caller's microphone level (RMS of the last block, 0..1), for a level meter. */
  onMicLevel?: (level: number) => void;
}

export interface PlaybackStats {
  peak: number;
  maxPeak: number;
  playedMs: Record<string, number>;
  busy: boolean;
  underruns: number;
}

interface Stats {
  type: "stats";
  busy: boolean;
  peak: number;
  played: Record<string, number>;
  underruns: number;
}

export class CallSession {
  state: CallState = "idle";
  conversationId: string | null = null;
  costTotal = "0";
  private ws: WebSocket | null = null;
  private context: AudioContext | null = null;
  private stream: MediaStream | null = null;
  private capture: AudioWorkletNode | null = null;
  private playback: AudioWorkletNode | null = null;
  private analyser: AnalyserNode | null = null;
  private downsampler: StreamResampler | null = null;
  private upsampler: StreamResampler | null = null;
  private framer = new Framer(FRAME_SAMPLES);
  private seq = 0;
  private agentBusy = false;
  private overlapMs = 0;
  private bargingIn = false;
  private interrupted = new Set<string>();
  private ended = new Set<string>();
  private maxPeak = 0;
  private micPeak = 0;
  private micReportedAt = 0;
  private pingTimer: number | null = null;
  private pendingFlush: ((value: { turnId: string | null; playedSamples: number }) => void) | null = null;

  constructor(private readonly options: CallOptions) {}

  async start(): Promise<void> {
    this.setState("connecting");
    try {
      const context = new AudioContext({ latencyHint: "interactive" });
      this.context = context;
      await loadWorklets(context);
      await context.resume();
      const prebuffer = Math.round((context.sampleRate * (this.options.prebufferMs ?? 120)) / 1000);
      this.playback = new AudioWorkletNode(context, PLAYBACK_PROCESSOR, {
        numberOfInputs: 0,
        outputChannelCount: [1],
        processorOptions: { prebufferSamples: prebuffer },
      });
      this.analyser = context.createAnalyser();
      this.analyser.fftSize = 1024;
      this.playback.connect(this.analyser).connect(context.destination);
      this.playback.port.onmessage = (event) => this.onPlaybackMessage(event.data);
      this.upsampler = new StreamResampler(SAMPLE_RATE, context.sampleRate);
      if (this.options.microphone !== false) await this.startMicrophone(context);
      await this.connect();
    } catch (error) {
      this.fail(error instanceof Error ? error.message : String(error));
      throw error;
    }
  }

  private async startMicrophone(context: AudioContext): Promise<void> {
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
    });
    const source = context.createMediaStreamSource(this.stream);
    this.capture = new AudioWorkletNode(context, CAPTURE_PROCESSOR, { numberOfOutputs: 0 });
    this.downsampler = new StreamResampler(context.sampleRate, SAMPLE_RATE);
    this.capture.port.onmessage = (event) => this.onCaptured(event.data as Float32Array);
    source.connect(this.capture);
  }

  private connect(): Promise<void> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.options.wsUrl);
      this.ws = ws;
      ws.onopen = () => {
        ws.send(JSON.stringify({ action: "start" }));
        this.pingTimer = window.setInterval(() => this.send({ action: "ping" }), 15_000);
        resolve();
      };
      ws.onerror = () => reject(new Error("the voice connection failed"));
      ws.onmessage = (event) => this.onMessage(JSON.parse(String(event.data)) as ServerFrame);
      ws.onclose = () => {
        if (this.state === "live" || this.state === "connecting") this.setState("ended", "connection closed");
        this.release();
      };
    });
  }

  private send(frame: Record<string, unknown>): void {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(frame));
  }

  sendText(text: string): void {
    const trimmed = text.trim();
    if (trimmed) this.send({ action: "text", text: trimmed });
  }

  hangUp(): void {
    this.flushCapture();
    this.send({ action: "end" });
  }

  /** The caller's current utterance is over (the client's own endpointing; the server's VAD does it otherwise). */
  endUtterance(): void {
    this.flushCapture();
    this.send({ action: "end_of_utterance", last_seq: this.seq > 0 ? this.seq - 1 : undefined });
  }

  /** Analyser on the agent's audio as it leaves for the speakers. */
  outputLevel(): number {
    if (!this.analyser) return 0;
    const data = new Float32Array(this.analyser.fftSize);
    this.analyser.getFloatTimeDomainData(data);
    return data.reduce((peak, value) => Math.max(peak, Math.abs(value)), 0);
  }

  close(): void {
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close();
    this.release();
  }

  private release(): void {
    if (this.pingTimer !== null) window.clearInterval(this.pingTimer);
    this.pingTimer = null;
    this.stream?.getTracks().forEach((track) => track.stop());
    this.stream = null;
    this.capture?.disconnect();
    this.capture = null;
    const context = this.context;
    this.context = null;
    // Let the last audio play out before closing the context.
    if (context) window.setTimeout(() => void context.close(), 1500);
  }

  private setState(state: CallState, detail?: string): void {
    this.state = state;
    this.options.onState?.(state, detail);
  }

  private fail(message: string): void {
    this.setState("failed", message);
    this.close();
  }

  // -- caller audio ------------------------------------------------------------------------------------------------
  private onCaptured(block: Float32Array): void {
    if (!this.downsampler || this.state !== "live") return;
    const level = rms(block);
    this.micPeak = Math.max(this.micPeak, level);
    if (performance.now() - this.micReportedAt >= 100) {
      this.options.onMicLevel?.(this.micPeak); // ten times a second is enough for a meter
      this.micReportedAt = performance.now();
      this.micPeak = 0;
    }
    const blockMs = (block.length / (this.context?.sampleRate ?? 48_000)) * 1000;
    if (this.agentBusy && level >= (this.options.bargeInLevel ?? 0.02)) {
      this.overlapMs += blockMs;
      if (this.overlapMs >= (this.options.bargeInMs ?? 200)) void this.bargeIn();
    } else {
      this.overlapMs = 0;
    }
    const samples = floatToPcm16(this.downsampler.process(block));
    for (const frame of this.framer.push(samples)) this.sendAudio(frame, false);
  }

  private sendAudio(samples: Int16Array, endOfUtterance: boolean): void {
    this.send({
      action: "audio",
      seq: this.seq++,
      data: bytesToBase64(pcm16ToBytes(samples)),
      ...(endOfUtterance ? { end_of_utterance: true } : {}),
    });
  }

  private flushCapture(): void {
    const rest = this.framer.drain();
    if (rest.length) this.sendAudio(rest, true);
  }

  // -- barge-in ------------------------------------------------------------------------------------------------------
  private async bargeIn(): Promise<void> {
    if (this.bargingIn || !this.playback) return;
    this.bargingIn = true;
    this.overlapMs = 0;
    try {
      const { turnId, playedMs } = await this.flushPlayback();
      if (turnId) this.interrupted.add(turnId);
      this.agentBusy = false;
      this.sendInterrupt(turnId, playedMs);
      this.options.onBargeIn?.(turnId, playedMs);
    } finally {
      this.bargingIn = false;
    }
  }

  /** The server cut `turnId`: stop its audio and, if it was playing, tell the server how much of it was played. */
  private async reportPlayed(turnId: string): Promise<void> {
    if (!this.playback) return;
    this.bargingIn = true;
    try {
      const { turnId: playing, playedMs } = await this.flushPlayback();
      this.agentBusy = false;
      if (playing === turnId) this.sendInterrupt(turnId, playedMs); // played to its end: all of it was heard
    } finally {
      this.bargingIn = false;
    }
  }

  /** Drop the queued agent audio; the turn that was playing and how much of it the speakers got. */
  private flushPlayback(): Promise<{ turnId: string | null; playedMs: number }> {
    return new Promise((resolve) => {
      this.pendingFlush = ({ turnId, playedSamples }) =>
        resolve({ turnId, playedMs: Math.round((playedSamples / (this.context?.sampleRate ?? SAMPLE_RATE)) * 1000) });
      this.playback!.port.postMessage({ type: "flush" });
    });
  }

  private sendInterrupt(turnId: string | null, playedMs: number): void {
    // Always names the turn that was playing: an interrupt that arrives after the next turn has started is then
    // refused (`turn_not_current`) instead of cutting a turn the caller has not heard yet.
    this.send({ action: "interrupt", played_ms: playedMs, ...(turnId ? { turn_id: turnId } : {}) });
  }

  private onPlaybackMessage(message: Stats | { type: "flushed"; turnId: string | null; playedSamples: number }): void {
    if (message.type === "flushed") {
      this.pendingFlush?.({ turnId: message.turnId, playedSamples: message.playedSamples });
      this.pendingFlush = null;
      return;
    }
    this.agentBusy = message.busy;
    this.maxPeak = Math.max(this.maxPeak, message.peak);
    const rate = this.context?.sampleRate ?? SAMPLE_RATE;
    const playedMs: Record<string, number> = {};
    for (const [turn, samples] of Object.entries(message.played)) playedMs[turn] = Math.round((samples / rate) * 1000);
    this.options.onPlayback?.({
      peak: message.peak,
      maxPeak: this.maxPeak,
      playedMs,
      busy: message.busy,
      underruns: message.underruns,
    });
  }

  // -- server frames -------------------------------------------------------------------------------------------------
  private onMessage(frame: ServerFrame): void {
    switch (frame.type) {
      case "ready":
        this.conversationId = frame.conversation_id;
        this.setState("live");
        break;
      case "audio":
        this.playAudio(frame.turn_id, frame.data);
        break;
      case "turn_end":
        this.endTurnAudio(frame.turn_id);
        if (frame.cost?.total !== undefined && frame.cost.total !== null) {
          try {
            this.costTotal = addDecimal(this.costTotal, frame.cost.total);
          } catch (error) {
            this.fail(error instanceof Error ? error.message : String(error)); // not a decimal string: not our protocol
            return;
          }
          this.options.onCost?.(this.costTotal);
        }
        break;
      case "interrupted":
        if (!this.interrupted.has(frame.turn_id) && !this.bargingIn) {
          // The server cut the turn (its VAD heard the caller) and counted everything posted as heard: say what
          // was played, so the stored reply and the next LLM context are only that.
          void this.reportPlayed(frame.turn_id);
        } else {
          this.playback?.port.postMessage({ type: "flush" });
        }
        this.interrupted.add(frame.turn_id);
        break;
      case "error":
        // Reported as it is (onFrame); nothing is sent again. `turn_not_current` means an interrupt came too late
        // for its turn: it is dropped, and the current turn plays on.
        break;
      case "ended":
        this.flushCapture();
        this.setState("ended", frame.reason);
        break;
    }
    this.options.onFrame?.(frame);
  }

  private playAudio(turnId: string, data: string): void {
    if (!this.playback || !this.upsampler || this.interrupted.has(turnId)) return;
    const samples = this.upsampler.process(pcm16ToFloat(bytesToPcm16(base64ToBytes(data))));
    this.agentBusy = true;
    this.playback.port.postMessage({ type: "push", turnId, samples }, [samples.buffer]);
  }

  private endTurnAudio(turnId: string): void {
    if (!this.playback || !this.upsampler || this.ended.has(turnId)) return;
    this.ended.add(turnId);
    if (!this.interrupted.has(turnId)) {
      const tail = this.upsampler.flush();
      if (tail.length) this.playback.port.postMessage({ type: "push", turnId, samples: tail }, [tail.buffer]);
    }
    this.playback.port.postMessage({ type: "end", turnId });
  }
}
