export function dateTime(value: string | null | undefined): string {
  if (!value) return "–";
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? value : date.toLocaleString();
}

export function ms(value: number | null | undefined): string {
  return typeof value === "number" ? `${Math.round(value)} ms` : "–";
}

export function seconds(value: number | null | undefined): string {
  return typeof value === "number" ? `${value.toFixed(1)} s` : "–";
}
