import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import type { ServerFrame } from "./protocol";
import { CallSession } from "./session";

// A call driven end to end without a browser: the WebSocket, the Web Audio graph and the microphone are stand-ins
// that record what the session sends and let the test play the server, the speakers and the caller.

const RATE = 48_000;

class FakeSocket {
  static readonly CONNECTING = 0;
  static readonly OPEN = 1;
  static last: FakeSocket | null = null;
  readyState = FakeSocket.CONNECTING;
  sent: Record<string, unknown>[] = [];
  onopen: (() => void) | null = null;
  onerror: (() => void) | null = null;
  onclose: (() => void) | null = null;
  onmessage: ((event: { data: string }) => void) | null = null;

  constructor(readonly url: string) {
    FakeSocket.last = this;
    queueMicrotask(() => {
      this.readyState = FakeSocket.OPEN;
      this.onopen?.();
    });
  }

  send(data: string): void {
    this.sent.push(JSON.parse(data) as Record<string, unknown>);
  }

  close(): void {
    this.readyState = 3;
  }

  receive(frame: ServerFrame): void {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }

  interrupts(): Record<string, unknown>[] {
    return this.sent.filter((frame) => frame.action === "interrupt");
  }
}

class FakePort {
  onmessage: ((event: { data: unknown }) => void) | null = null;
  posted: { type: string; turnId?: string }[] = [];
  constructor(private readonly node: FakeNode) {}

  postMessage(message: { type: string; turnId?: string }): void {
    this.posted.push(message);
    if (message.type === "flush") {
      // The playback worklet answers with what the speakers got of the turn it was playing.
      const { turnId, playedSamples } = this.node.playing;
      queueMicrotask(() => this.onmessage?.({ data: { type: "flushed", turnId, playedSamples } }));
    }
  }
}

class FakeNode {
  static created: FakeNode[] = [];
  readonly port = new FakePort(this);
  playing: { turnId: string | null; playedSamples: number } = { turnId: null, playedSamples: 0 };
  constructor(
    _context: unknown,
    readonly name: string,
  ) {
    FakeNode.created.push(this);
  }
  connect<T>(next: T): T {
    return next;
  }
  disconnect(): void {}

  static named(name: string): FakeNode {
    const node = FakeNode.created.find((n) => n.name === name);
    if (!node) throw new Error(`no ${name} node`);
    return node;
  }
}

class FakeAudioContext {
  readonly sampleRate = RATE;
  readonly destination = {};
  readonly audioWorklet = { addModule: async () => undefined };
  async resume(): Promise<void> {}
  async close(): Promise<void> {}
  createAnalyser() {
    return { fftSize: 0, connect: <T>(next: T) => next, getFloatTimeDomainData: () => undefined };
  }
  createMediaStreamSource() {
    return { connect: () => undefined };
  }
}

const tick = () => new Promise<void>((resolve) => setTimeout(resolve, 0));

async function liveCall(
  onState?: (state: string, detail?: string) => void,
): Promise<{ socket: FakeSocket; playback: FakeNode; capture: FakeNode }> {
  const session = new CallSession({ wsUrl: "ws://test/voice", bargeInMs: 40, onState });
  await session.start();
  const socket = FakeSocket.last!;
  socket.receive({ type: "ready", conversation_id: "conv_1", agent_id: "agt_1", agent_version: 1, resumed: false });
  return { socket, playback: FakeNode.named("airies-playback"), capture: FakeNode.named("airies-capture") };
}

/** The agent is heard on `turnId` (played so far) and the caller talks over it until the session yields. */
async function bargeIn(playback: FakeNode, capture: FakeNode, turnId: string, playedMs: number): Promise<void> {
  playback.playing = { turnId, playedSamples: (playedMs * RATE) / 1000 };
  playback.port.onmessage?.({ data: { type: "stats", busy: true, peak: 0.5, played: {}, underruns: 0 } });
  for (let i = 0; i < 4; i++) capture.port.onmessage?.({ data: new Float32Array(1024).fill(0.3) }); // ~85 ms
  await tick();
}

describe("CallSession barge-in", () => {
  beforeEach(() => {
    FakeNode.created = [];
    FakeSocket.last = null;
    vi.stubGlobal("WebSocket", FakeSocket);
    vi.stubGlobal("AudioContext", FakeAudioContext);
    vi.stubGlobal("AudioWorkletNode", FakeNode);
    vi.stubGlobal("navigator", { mediaDevices: { getUserMedia: async () => ({ getTracks: () => [] }) } });
    vi.stubGlobal("window", { setInterval: () => 1, clearInterval: () => undefined, setTimeout: () => 1 });
  });
  afterEach(() => vi.unstubAllGlobals());

  it("names the interrupted turn and its played_ms", async () => {
    const { socket, playback, capture } = await liveCall();
    await bargeIn(playback, capture, "turn_a", 500);
    expect(socket.interrupts()).toEqual([{ action: "interrupt", played_ms: 500, turn_id: "turn_a" }]);
  });

  it("drops an interrupt refused as too late instead of cutting the current turn with it", async () => {
    const { socket, playback, capture } = await liveCall();
    await bargeIn(playback, capture, "turn_a", 500);
    socket.receive({
      type: "error",
      code: "turn_not_current",
      message: "the interrupt names a turn that is no longer the current one",
      details: { turn_id: "turn_a", current_turn_id: "turn_b" },
    });
    await tick();
    // Not said again without its turn_id: the server would apply turn_a's 500 ms to turn_b.
    expect(socket.interrupts()).toEqual([{ action: "interrupt", played_ms: 500, turn_id: "turn_a" }]);

    // The next barge-in still names its turn.
    await bargeIn(playback, capture, "turn_b", 1200);
    expect(socket.interrupts().slice(1)).toEqual([{ action: "interrupt", played_ms: 1200, turn_id: "turn_b" }]);
  });

  it("tells the server what was played of a turn the server cut by voice", async () => {
    const { socket, playback } = await liveCall();
    playback.playing = { turnId: "turn_a", playedSamples: (700 * RATE) / 1000 };
    socket.receive({ type: "interrupted", turn_id: "turn_a", heard_text: "Everything posted was" });
    await tick();
    expect(socket.interrupts()).toEqual([{ action: "interrupt", played_ms: 700, turn_id: "turn_a" }]);
    // The server's answer (the shorter heard text) is not reported again.
    socket.receive({ type: "interrupted", turn_id: "turn_a", heard_text: "Everything" });
    await tick();
    expect(socket.interrupts()).toHaveLength(1);
  });

  it("does not report a turn cut by the server after it played to its end", async () => {
    const { socket, playback } = await liveCall();
    playback.playing = { turnId: null, playedSamples: 0 };
    socket.receive({ type: "interrupted", turn_id: "turn_a", heard_text: "All of it" });
    await tick();
    expect(socket.interrupts()).toEqual([]);
  });

  it("fails the call, saying why, when a turn's cost is a JSON number instead of a decimal string", async () => {
    const states: [string, string | undefined][] = [];
    const { socket } = await liveCall((state, detail) => states.push([state, detail]));
    const turnEnd = (total: unknown) =>
      ({ type: "turn_end", turn_id: "turn_a", seq: 1, status: "completed", cost: { total } }) as ServerFrame;
    socket.receive(turnEnd("0.000001250"));
    socket.receive(turnEnd(0.1));
    expect(states.at(-1)?.[0]).toBe("failed");
    expect(states.at(-1)?.[1]).toMatch(/protocol error.*decimal string/);
  });
});
