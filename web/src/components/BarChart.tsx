import { magnitude } from "../money";

export interface Bar {
  label: string;
  parts: { key: string; value: string }[]; // exact decimal strings, shown as they are
}

const PALETTE = ["#2563eb", "#f59e0b", "#10b981", "#a855f7", "#ef4444", "#0ea5e9", "#84cc16", "#64748b"];

/** Stacked bars (e.g. credits per day, by component). Heights use the numbers; every label is the exact text. */
export function BarChart({ bars, unit }: { bars: Bar[]; unit: string }) {
  if (!bars.length) return <p class="muted">No usage in this period.</p>;
  const keys = Array.from(new Set(bars.flatMap((bar) => bar.parts.map((part) => part.key))));
  const colour = (key: string) => PALETTE[keys.indexOf(key) % PALETTE.length];
  const totals = bars.map((bar) => bar.parts.reduce((sum, part) => sum + magnitude(part.value), 0));
  const max = Math.max(...totals, 1e-12);
  const width = Math.max(160, bars.length * 48); // drawn at its size: one day is no giant bar
  const height = 180;
  const barWidth = Math.min(36, width / bars.length - 12);
  return (
    <figure class="chart" data-testid="usage-chart">
      <svg width={width} height={height + 30} role="img" aria-label={`usage by day in ${unit}`}>
        {bars.map((bar, index) => {
          let y = height;
          const x = index * (width / bars.length) + 6;
          return (
            <g key={bar.label}>
              {bar.parts.map((part) => {
                const h = (magnitude(part.value) / max) * (height - 10);
                y -= h;
                return (
                  <rect key={part.key} x={x} y={y} width={barWidth} height={Math.max(h, 0.5)} fill={colour(part.key)}>
                    <title>{`${bar.label} · ${part.key}: ${part.value} ${unit}`}</title>
                  </rect>
                );
              })}
              <text x={x + barWidth / 2} y={height + 16} text-anchor="middle" font-size="10">
                {bar.label.slice(5)}
              </text>
            </g>
          );
        })}
      </svg>
      <figcaption class="legend">
        {keys.map((key) => (
          <span key={key}>
            <i style={{ background: colour(key) }} /> {key}
          </span>
        ))}
      </figcaption>
    </figure>
  );
}
