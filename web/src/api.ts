// The REST API (/api/v1) with the signed-in key. The key lives in sessionStorage only: gone with the tab.

export const API_BASE = "/api/v1";
const KEY_STORAGE = "airies.apiKey";

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details: unknown,
  ) {
    super(message);
  }

  /** Validation problems as {field path: message}, for showing them beside the fields. */
  fieldProblems(): Record<string, string> {
    const problems: Record<string, string> = {};
    if (Array.isArray(this.details)) {
      for (const item of this.details as { field?: string; message?: string }[]) {
        if (item && item.field) problems[item.field] = item.message ?? "invalid";
      }
    }
    return problems;
  }
}

export function apiKey(): string | null {
  return sessionStorage.getItem(KEY_STORAGE);
}

export function setApiKey(key: string | null): void {
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
}

type Query = Record<string, string | number | boolean | null | undefined>;

export interface RequestOptions {
  method?: string;
  body?: unknown;
  query?: Query;
  key?: string; // a key to try (sign-in) instead of the stored one
}

export async function api<T>(path: string, options: RequestOptions = {}): Promise<T> {
  const url = new URL(API_BASE + path, window.location.origin);
  for (const [name, value] of Object.entries(options.query ?? {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, String(value));
  }
  const headers: Record<string, string> = { accept: "application/json" };
  const key = options.key ?? apiKey();
  if (key) headers.authorization = `Bearer ${key}`;
  let body: BodyInit | undefined;
  if (options.body !== undefined) {
    headers["content-type"] = "application/json";
    body = JSON.stringify(options.body);
  }
  const response = await fetch(url, { method: options.method ?? "GET", headers, body });
  if (response.status === 204) return undefined as T;
  const text = await response.text();
  const payload = text ? safeJson(text) : null;
  if (!response.ok) {
    const error = (payload as { error?: { code?: string; message?: string; details?: unknown } } | null)?.error;
    if (response.status === 401 && !options.key) window.dispatchEvent(new Event("airies:signed-out"));
    throw new ApiError(
      response.status,
      error?.code ?? "http_error",
      error?.message ?? `${response.status} ${response.statusText}`,
      error?.details ?? null,
    );
  }
  return payload as T;
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return { error: { code: "bad_response", message: text.slice(0, 200) } };
  }
}

export interface Page<T> {
  data: T[];
  next_cursor: string | null;
  has_more: boolean;
}

export interface AppConfig {
  stage: string;
  dev_api_key?: string | null;
  api_base_path: string;
}

export async function appConfig(): Promise<AppConfig> {
  const response = await fetch("/app-config.json", { headers: { accept: "application/json" } });
  if (!response.ok) return { stage: "unknown", api_base_path: API_BASE };
  return (await response.json()) as AppConfig;
}
