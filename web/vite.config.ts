// The dashboard (index.html). Output goes into the airies package, so the API function ships it (docs/web-app.md).
import { defineConfig } from "vitest/config";

export const OUT_DIR = "../layers/common/airies/webapp/dist";

export default defineConfig({
  esbuild: { jsx: "automatic", jsxImportSource: "preact" },
  build: { outDir: OUT_DIR, emptyOutDir: true, target: "es2022", assetsDir: "assets" },
  server: {
    // `npm run dev` against `make run`: the API and the voice WebSocket stay on the local stack.
    proxy: { "/api": "http://127.0.0.1:8000", "/ws": { target: "ws://127.0.0.1:8000", ws: true } },
  },
  test: { include: ["src/**/*.test.ts"], environment: "node" },
});
