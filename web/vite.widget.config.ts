// The embeddable widget: one self-contained script (widget.js) that a business puts on its own site.
import { defineConfig } from "vite";
import { OUT_DIR } from "./vite.config";

export default defineConfig({
  build: {
    outDir: OUT_DIR,
    emptyOutDir: false, // the dashboard was built into the same folder first
    target: "es2022",
    lib: { entry: "src/widget/widget.ts", name: "AiriesWidget", formats: ["iife"], fileName: () => "widget.js" },
  },
});
