// Streaming sample-rate conversion with a windowed-sinc (Hann) low-pass: the microphone (44.1/48 kHz) down to the
// protocol's 16 kHz without aliasing, and the agent's 16 kHz audio up to the AudioContext's rate.

function sinc(x: number): number {
  if (x === 0) return 1;
  const px = Math.PI * x;
  return Math.sin(px) / px;
}

export class StreamResampler {
  readonly inRate: number;
  readonly outRate: number;
  private readonly step: number; // input samples per output sample
  private readonly cutoff: number; // of the input's Nyquist frequency
  private readonly half: number; // filter half-width, in input samples
  private pending: Float32Array; // history + input not consumed yet
  private position: number; // where the next output sample falls, in `pending` index units

  constructor(inRate: number, outRate: number, zeroCrossings = 8) {
    if (!(inRate > 0 && outRate > 0)) throw new Error("sample rates must be positive");
    this.inRate = inRate;
    this.outRate = outRate;
    this.step = inRate / outRate;
    this.cutoff = Math.min(1, outRate / inRate) * 0.95; // a little under Nyquist: the Hann window is not a brick wall
    this.half = Math.ceil(zeroCrossings / this.cutoff);
    this.pending = new Float32Array(this.half);
    this.position = this.half;
  }

  /** Output for this block of input; call it with every block, in order. */
  process(input: Float32Array): Float32Array {
    if (this.inRate === this.outRate) return input.slice();
    const data = new Float32Array(this.pending.length + input.length);
    data.set(this.pending);
    data.set(input, this.pending.length);
    const out = new Float32Array(Math.ceil((data.length - this.position) / this.step) + 1);
    let count = 0;
    while (this.position + this.half < data.length) {
      const centre = Math.floor(this.position);
      let acc = 0;
      let norm = 0;
      for (let n = centre - this.half + 1; n <= centre + this.half; n++) {
        const distance = this.position - n;
        const window = 0.5 + 0.5 * Math.cos((Math.PI * distance) / this.half);
        const weight = sinc(distance * this.cutoff) * window;
        acc += data[n] * weight;
        norm += weight;
      }
      out[count++] = norm !== 0 ? acc / norm : 0; // normalised: unity gain at DC
      this.position += this.step;
    }
    const keepFrom = Math.max(0, Math.floor(this.position) - this.half);
    this.pending = data.slice(keepFrom);
    this.position -= keepFrom;
    return out.subarray(0, count);
  }

  /** The samples still held back by the filter (end of a stream): feeds silence through. */
  flush(): Float32Array {
    if (this.inRate === this.outRate) return new Float32Array(0);
    return this.process(new Float32Array(this.half * 2));
  }
}
