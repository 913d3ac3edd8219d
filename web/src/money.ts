// Money and usage arrive as exact fixed-point decimal strings ("0.001250"; docs/api.md, "Money"). They are shown as
// sent, and added with integer arithmetic on their digits: never through floats. Anything else (a JSON number, an
// exponent, text) is a protocol error and is refused, never rounded into a figure.

/** An amount as the API sends it; absent (null or missing) counts as zero. */
export type Amount = string | null | undefined;

const DECIMAL = /^(-)?(\d+)(?:\.(\d+))?$/;

/** The exact decimal text of an API amount ("0.001250"). */
export function decimalText(value: Amount): string {
  if (value === null || value === undefined) return "0";
  if (typeof value !== "string") {
    throw new Error(`protocol error: an amount must be a decimal string, got the JSON ${typeof value} ${String(value)}`);
  }
  if (!DECIMAL.test(value)) throw new Error(`protocol error: not a decimal amount: ${JSON.stringify(value)}`);
  return value;
}

interface Scaled {
  units: bigint;
  scale: number;
}

function parse(value: Amount): Scaled {
  const [, sign, whole, frac = ""] = DECIMAL.exec(decimalText(value))!;
  const units = BigInt(whole + frac);
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
export function addDecimal(a: Amount, b: Amount): string {
  const x = parse(a);
  const y = parse(b);
  const scale = Math.max(x.scale, y.scale);
  const units = x.units * 10n ** BigInt(scale - x.scale) + y.units * 10n ** BigInt(scale - y.scale);
  return render({ units, scale });
}

export function sumDecimals(values: Amount[]): string {
  return values.reduce<string>((total, value) => addDecimal(total, value), "0");
}

/** Compare two amounts exactly: -1, 0 or 1. */
export function compareDecimal(a: Amount, b: Amount): number {
  const diff = parse(addDecimal(a, negate(b))).units;
  return diff === 0n ? 0 : diff < 0n ? -1 : 1;
}

function negate(value: Amount): string {
  const text = decimalText(value);
  return text.startsWith("-") ? text.slice(1) : `-${text}`;
}

/** "$0.001250": the API's digits, with a currency sign. */
export function usd(value: Amount): string {
  const text = decimalText(value);
  return text.startsWith("-") ? `-$${text.slice(1)}` : `$${text}`;
}

/** A value for chart geometry only (bar heights); never used for a figure that is displayed. */
export function magnitude(value: Amount): number {
  return Number(decimalText(value));
}
