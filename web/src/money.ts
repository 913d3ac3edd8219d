// Money and usage arrive as exact decimal strings (older servers sent some as JSON numbers). They are shown as
// sent, and added with integer arithmetic on their digits: never through floats.

export type Decimalish = string | number | null | undefined;

const DECIMAL = /^(-)?(\d*)(?:\.(\d*))?$/;

/** The exact decimal text of an API value ("0.001250"); a JSON number becomes its shortest round-trip text. */
export function decimalText(value: Decimalish): string {
  if (value === null || value === undefined || value === "") return "0";
  if (typeof value === "number") {
    if (!Number.isFinite(value)) throw new Error(`not a finite amount: ${value}`);
    // Shortest text that round-trips; exponent form ("1e-7") is expanded so the digits stay exact.
    return expandExponent(String(value));
  }
  return value.trim();
}

function expandExponent(text: string): string {
  const match = /^(-?)(\d)(?:\.(\d+))?e([+-]\d+)$/.exec(text);
  if (!match) return text;
  const [, sign, lead, frac = "", exp] = match;
  const digits = lead + frac;
  const point = 1 + Number(exp);
  if (point <= 0) return `${sign}0.${"0".repeat(-point)}${digits}`;
  if (point >= digits.length) return sign + digits + "0".repeat(point - digits.length);
  return `${sign}${digits.slice(0, point)}.${digits.slice(point)}`;
}

interface Scaled {
  units: bigint;
  scale: number;
}

function parse(value: Decimalish): Scaled {
  const text = decimalText(value);
  const match = DECIMAL.exec(text);
  if (!match || (match[2] === "" && (match[3] ?? "") === "")) throw new Error(`not a decimal amount: ${text}`);
  const [, sign, whole, frac = ""] = match;
  const units = BigInt((whole || "0") + frac);
  return { units: sign ? -units : units, scale: frac.length };
}

function render({ units, scale }: Scaled): string {
  const negative = units < 0n;
  let digits = (negative ? -units : units).toString();
  if (scale > 0) {
    digits = digits.padStart(scale + 1, "0");
    digits = `${digits.slice(0, -scale)}.${digits.slice(-scale)}`;
  }
  return (negative ? "-" : "") + digits;
}

/** a + b, exactly, with as many decimals as the more precise of the two. */
export function addDecimal(a: Decimalish, b: Decimalish): string {
  const x = parse(a);
  const y = parse(b);
  const scale = Math.max(x.scale, y.scale);
  const units = x.units * 10n ** BigInt(scale - x.scale) + y.units * 10n ** BigInt(scale - y.scale);
  return render({ units, scale });
}

export function sumDecimals(values: Decimalish[]): string {
  return values.reduce<string>((total, value) => addDecimal(total, value), "0");
}

/** Compare two amounts exactly: -1, 0 or 1. */
export function compareDecimal(a: Decimalish, b: Decimalish): number {
  const diff = parse(addDecimal(a, negate(b))).units;
  return diff === 0n ? 0 : diff < 0n ? -1 : 1;
}

function negate(value: Decimalish): string {
  const text = decimalText(value);
  return text.startsWith("-") ? text.slice(1) : `-${text}`;
}

/** "$0.001250": the API's digits, with a currency sign. */
export function usd(value: Decimalish): string {
  const text = decimalText(value);
  return text.startsWith("-") ? `-$${text.slice(1)}` : `$${text}`;
}

/** A value for chart geometry only (bar heights); never used for a figure that is displayed. */
export function magnitude(value: Decimalish): number {
  return Number(decimalText(value));
}
