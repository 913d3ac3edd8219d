import { describe, expect, it } from "vitest";
import { JitterBuffer } from "./jitter";
import { Framer, bytesToPcm16, floatToPcm16, pcm16ToBytes, rms } from "./pcm";
import { waterfall } from "./protocol";
import { StreamResampler } from "./resample";
import { playbackSourceForTests } from "./worklets";

function sine(freq: number, rate: number, seconds: number): Float32Array {
  const out = new Float32Array(Math.round(rate * seconds));
  for (let i = 0; i < out.length; i++) out[i] = Math.sin((2 * Math.PI * freq * i) / rate);
  return out;
}

function resampleInBlocks(resampler: StreamResampler, input: Float32Array, block: number): Float32Array {
  const parts: Float32Array[] = [];
  for (let i = 0; i < input.length; i += block) parts.push(resampler.process(input.subarray(i, i + block)));
  const total = parts.reduce((n, p) => n + p.length, 0);
  const out = new Float32Array(total);
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

function zeroCrossings(samples: Float32Array): number {
  let count = 0;
  for (let i = 1; i < samples.length; i++) if (samples[i - 1] < 0 !== samples[i] < 0) count++;
  return count;
}

describe("StreamResampler", () => {
  it("takes 48 kHz speech-band audio to 16 kHz, block by block, keeping pitch and level", () => {
    const input = sine(1000, 48_000, 1);
    const out = resampleInBlocks(new StreamResampler(48_000, 16_000), input, 128);
    expect(Math.abs(out.length - 16_000)).toBeLessThan(40); // the filter holds back a few samples
    const steady = out.subarray(200, 15_000);
    expect(rms(steady)).toBeCloseTo(Math.SQRT1_2, 1);
    const seconds = steady.length / 16_000;
    expect(zeroCrossings(steady) / seconds / 2).toBeCloseTo(1000, -1);
  });

  it("removes what 16 kHz cannot carry instead of folding it back (no aliasing)", () => {
    const out = resampleInBlocks(new StreamResampler(48_000, 16_000), sine(12_000, 48_000, 0.5), 1024);
    expect(rms(out.subarray(100))).toBeLessThan(0.05);
  });

  it("takes the agent's 16 kHz audio up to 44.1 kHz", () => {
    const out = resampleInBlocks(new StreamResampler(16_000, 44_100), sine(440, 16_000, 1), 3200);
    const steady = out.subarray(500, 40_000);
    expect(rms(steady)).toBeCloseTo(Math.SQRT1_2, 1);
    expect(zeroCrossings(steady) / (steady.length / 44_100) / 2).toBeCloseTo(440, -1);
  });
});

describe("PCM16 frames", () => {
  it("cuts 200 ms frames of 3,200 samples and keeps the rest", () => {
    const framer = new Framer(3200);
    expect(framer.push(new Int16Array(3000))).toHaveLength(0);
    const frames = framer.push(new Int16Array(3500));
    expect(frames.map((f) => f.length)).toEqual([3200, 3200]);
    expect(framer.drain().length).toBe(100);
    expect(framer.drain().length).toBe(0);
  });

  it("round-trips little-endian PCM16 with clipping", () => {
    const pcm = floatToPcm16(Float32Array.from([0, 0.5, -0.5, 1.5, -2]));
    expect(Array.from(pcm)).toEqual([0, 16384, -16384, 32767, -32768]);
    const bytes = pcm16ToBytes(pcm);
    expect(Array.from(bytes.subarray(2, 4))).toEqual([0x00, 0x40]);
    expect(Array.from(bytesToPcm16(bytes))).toEqual(Array.from(pcm));
  });
});

describe("JitterBuffer", () => {
  it("waits for the prebuffer, then counts exactly what it played", () => {
    const jitter = new JitterBuffer(256);
    const out = new Float32Array(128);
    jitter.push("t1", new Float32Array(200).fill(0.5));
    jitter.render(out);
    expect(out.every((s) => s === 0)).toBe(true); // 200 < 256 queued: still buffering
    jitter.push("t1", new Float32Array(200).fill(0.5));
    jitter.render(out);
    jitter.render(out);
    expect(jitter.stats().played).toEqual({ t1: 256 });
    const { turnId, playedSamples } = jitter.flush();
    expect([turnId, playedSamples]).toEqual(["t1", 256]);
    jitter.push("t1", new Float32Array(500).fill(0.5)); // late audio of the interrupted turn is dropped
    expect(jitter.busy()).toBe(false);
  });

  it("plays a finished turn's short tail without waiting, and reports the output peak", () => {
    const jitter = new JitterBuffer(10_000);
    jitter.push("t2", new Float32Array(100).fill(-0.25));
    jitter.end("t2");
    const out = new Float32Array(128);
    jitter.render(out);
    const stats = jitter.stats();
    expect(stats.played.t2).toBe(100);
    expect(stats.peak).toBeCloseTo(0.25);
    expect(out[99]).toBeCloseTo(-0.25);
    expect(out[100]).toBe(0);
    expect(stats.underruns).toBe(0);
  });

  it("counts an underrun when a turn still streaming runs dry", () => {
    const jitter = new JitterBuffer(64);
    jitter.push("t3", new Float32Array(64).fill(0.1));
    jitter.render(new Float32Array(128));
    expect(jitter.stats().underruns).toBe(1);
  });

  it("is self-contained enough to run as the worklet's source", () => {
    const source = playbackSourceForTests();
    const Jitter = new Function(`return (${JitterBuffer.toString()});`)();
    const copy = new Jitter(1);
    copy.push("t", new Float32Array([0.3]));
    copy.end("t");
    copy.render(new Float32Array(4));
    expect(copy.stats().played).toEqual({ t: 1 });
    expect(source).toContain("registerProcessor");
  });
});

describe("waterfall", () => {
  it("lays the stages end to end after endpointing", () => {
    const { steps, firstAudio } = waterfall({
      endpointing_ms: 500,
      stt_ms: 120,
      retrieval_ms: null,
      llm_first_token_ms: 300,
      tts_first_byte_ms: 80,
      first_audio_ms: 520,
    });
    expect(steps.map((s) => [s.label, s.start, s.ms])).toEqual([
      ["endpointing", 0, 500],
      ["STT", 500, 120],
      ["LLM first token", 620, 300],
      ["TTS first byte", 920, 80],
    ]);
    expect(firstAudio).toBe(1020);
  });
});
