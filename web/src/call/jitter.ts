// The agent's audio, queued per turn and played at the AudioContext's rate. It runs inside the playback
// AudioWorklet (its source text is loaded there by worklets.ts), so it must not refer to anything outside itself.

export interface JitterChunk {
  turnId: string;
  data: Float32Array;
  offset: number;
}

export interface JitterStats {
  played: Record<string, number>; // samples actually output, per turn
  peak: number; // largest |sample| output since the last stats
  queued: number; // samples waiting
  underruns: number;
  playing: string | null;
}

export class JitterBuffer {
  declare queue: JitterChunk[];
  declare queued: number;
  declare prebuffer: number;
  declare started: boolean;
  declare ended: Record<string, boolean>;
  declare played: Record<string, number>;
  declare current: string | null;
  declare peak: number;
  declare underruns: number;
  declare dropped: Record<string, boolean>;

  /** prebufferSamples: how much must be queued before a turn starts (or restarts after running dry). */
  constructor(prebufferSamples: number) {
    this.queue = [];
    this.queued = 0;
    this.prebuffer = prebufferSamples;
    this.started = false;
    this.ended = {};
    this.played = {};
    this.current = null;
    this.peak = 0;
    this.underruns = 0;
    this.dropped = {};
  }

  push(turnId: string, data: Float32Array): void {
    if (this.dropped[turnId] || data.length === 0) return; // audio of an interrupted turn still in flight
    this.queue.push({ turnId, data, offset: 0 });
    this.queued += data.length;
  }

  /** No more audio will come for this turn: play what is queued without waiting for the prebuffer. */
  end(turnId: string): void {
    this.ended[turnId] = true;
  }

  /** Barge-in: drop everything queued; returns the turn that was playing and how much of it was heard. */
  flush(): { turnId: string | null; playedSamples: number } {
    const turnId = this.current ?? (this.queue.length ? this.queue[0].turnId : null);
    for (const chunk of this.queue) this.dropped[chunk.turnId] = true;
    if (turnId !== null) this.dropped[turnId] = true;
    this.queue = [];
    this.queued = 0;
    this.started = false;
    return { turnId, playedSamples: turnId !== null ? this.played[turnId] || 0 : 0 };
  }

  /** Whether audio is playing or waiting to play. */
  busy(): boolean {
    return this.queued > 0;
  }

  /** Fill one render quantum; silence where nothing may play yet. */
  render(out: Float32Array): void {
    let i = 0;
    if (!this.started && this.queue.length) {
      const head = this.queue[0].turnId;
      if (this.queued >= this.prebuffer || this.ended[head]) this.started = true;
    }
    while (this.started && i < out.length && this.queue.length) {
      const chunk = this.queue[0];
      const take = Math.min(out.length - i, chunk.data.length - chunk.offset);
      for (let k = 0; k < take; k++) {
        const sample = chunk.data[chunk.offset + k];
        out[i + k] = sample;
        const level = sample < 0 ? -sample : sample;
        if (level > this.peak) this.peak = level;
      }
      this.current = chunk.turnId;
      this.played[chunk.turnId] = (this.played[chunk.turnId] || 0) + take;
      chunk.offset += take;
      this.queued -= take;
      i += take;
      if (chunk.offset >= chunk.data.length) this.queue.shift();
    }
    if (i < out.length) {
      out.fill(0, i);
      if (this.started && !this.queue.length) {
        // Ran dry: a turn still streaming is an underrun (rebuffer), a finished one simply ends.
        if (this.current !== null && !this.ended[this.current]) this.underruns++;
        this.started = false;
      }
    }
  }

  stats(): JitterStats {
    const stats = {
      played: { ...this.played },
      peak: this.peak,
      queued: this.queued,
      underruns: this.underruns,
      playing: this.started ? this.current : null,
    };
    this.peak = 0;
    return stats;
  }
}
