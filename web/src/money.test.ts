import { describe, expect, it } from "vitest";
import { addDecimal, compareDecimal, decimalText, sumDecimals, usd } from "./money";

describe("money", () => {
  it("adds decimal strings exactly where floats would not", () => {
    expect(0.1 + 0.2).not.toBe(0.3);
    expect(addDecimal("0.1", "0.2")).toBe("0.3");
    expect(addDecimal("0.000001250", "0.00375")).toBe("0.003751250");
    expect(sumDecimals(["0.000123456789", "1", "-0.5"])).toBe("0.500123456789");
  });

  it("keeps the API's digits, including trailing zeros", () => {
    expect(decimalText("0.001250")).toBe("0.001250");
    expect(usd("0.001250")).toBe("$0.001250");
    expect(usd("-2.50")).toBe("-$2.50");
  });

  it("refuses amounts that are not decimal strings: a JSON number is a protocol error", () => {
    expect(() => decimalText(0.00125 as unknown as string)).toThrow(/protocol error.*decimal string.*number 0\.00125/);
    expect(() => addDecimal(0.1 as unknown as string, "0.2")).toThrow(/protocol error/);
    expect(() => usd(1e-7 as unknown as string)).toThrow(/protocol error/);
    expect(() => decimalText("1e-7")).toThrow(/not a decimal amount/);
    expect(decimalText(null)).toBe("0");
    expect(decimalText(undefined)).toBe("0");
  });

  it("compares exactly and refuses what is not a number", () => {
    expect(compareDecimal("0.30", "0.3")).toBe(0);
    expect(compareDecimal("0.0000001", "0")).toBe(1);
    expect(() => addDecimal("abc", "1")).toThrow();
  });
});
