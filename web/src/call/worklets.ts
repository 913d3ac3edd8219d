// The two AudioWorklet processors, loaded from Blob URLs so the widget needs nothing from its host site:
// capture posts the microphone's samples to the page; playback plays the agent's audio from a JitterBuffer.
import { JitterBuffer } from "./jitter";

export const CAPTURE_PROCESSOR = "airies-capture";
export const PLAYBACK_PROCESSOR = "airies-playback";

const CAPTURE_SOURCE = `
class AiriesCapture extends AudioWorkletProcessor {
  constructor() { super(); this.block = new Float32Array(1024); this.filled = 0; }
  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) {
      let offset = 0;
      while (offset < channel.length) {
        const take = Math.min(this.block.length - this.filled, channel.length - offset);
        this.block.set(channel.subarray(offset, offset + take), this.filled);
        this.filled += take; offset += take;
        if (this.filled === this.block.length) {
          this.port.postMessage(this.block, [this.block.buffer]);
          this.block = new Float32Array(1024); this.filled = 0;
        }
      }
    }
    return true;
  }
}
registerProcessor(${JSON.stringify(CAPTURE_PROCESSOR)}, AiriesCapture);
`;

function playbackSource(): string {
  return `
const Jitter = (${JitterBuffer.toString()});
class AiriesPlayback extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.jitter = new Jitter(options.processorOptions.prebufferSamples);
    this.quanta = 0;
    this.wasBusy = false;
    this.port.onmessage = (event) => {
      const message = event.data;
      if (message.type === "push") this.jitter.push(message.turnId, message.samples);
      else if (message.type === "end") this.jitter.end(message.turnId);
      else if (message.type === "flush") this.port.postMessage({ type: "flushed", ...this.jitter.flush() });
    };
  }
  process(_inputs, outputs) {
    const output = outputs[0];
    this.jitter.render(output[0]);
    for (let c = 1; c < output.length; c++) output[c].set(output[0]);
    const busy = this.jitter.busy();
    // Stats about every 20 ms, and at once when the queue runs empty (the agent stopped speaking).
    if (++this.quanta % 8 === 0 || busy !== this.wasBusy) {
      this.port.postMessage({ type: "stats", busy, ...this.jitter.stats() });
    }
    this.wasBusy = busy;
    return true;
  }
}
registerProcessor(${JSON.stringify(PLAYBACK_PROCESSOR)}, AiriesPlayback);
`;
}

export async function loadWorklets(context: AudioContext): Promise<void> {
  for (const source of [CAPTURE_SOURCE, playbackSource()]) {
    const url = URL.createObjectURL(new Blob([source], { type: "text/javascript" }));
    try {
      await context.audioWorklet.addModule(url);
    } finally {
      URL.revokeObjectURL(url);
    }
  }
}

export { playbackSource as playbackSourceForTests };
