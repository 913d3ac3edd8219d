import type { ComponentChildren } from "preact";
import { useEffect, useState } from "preact/hooks";
import { ApiError } from "../api";
import { onLink } from "../router";

export function Link({ href, children, class: className }: { href: string; children: ComponentChildren; class?: string }) {
  return (
    <a href={href} class={className} onClick={(event) => onLink(event, href)}>
      {children}
    </a>
  );
}

export function ErrorBox({ error }: { error: unknown }) {
  if (!error) return null;
  const message = error instanceof ApiError ? `${error.message} (${error.code})` : String(error);
  return (
    <div class="error" role="alert">
      {message}
    </div>
  );
}

/** A labelled form field with its validation problem shown beside it. */
export function Field({
  label,
  problem,
  hint,
  children,
  name,
}: {
  label: string;
  problem?: string;
  hint?: string;
  children: ComponentChildren;
  name: string;
}) {
  return (
    <label class={`field${problem ? " has-problem" : ""}`} data-field={name}>
      <span class="field-label">{label}</span>
      {children}
      {problem ? (
        <span class="problem" data-testid={`problem-${name}`}>
          {problem}
        </span>
      ) : hint ? (
        <span class="hint">{hint}</span>
      ) : null}
    </label>
  );
}

/** Loads once (and again when `deps` change); returns [data, error, reload]. */
export function useLoad<T>(load: () => Promise<T>, deps: unknown[] = []): [T | null, unknown, () => void] {
  const [data, setData] = useState<T | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [tick, setTick] = useState(0);
  useEffect(() => {
    let alive = true;
    load().then(
      (value) => alive && (setData(value), setError(null)),
      (err) => alive && setError(err),
    );
    return () => {
      alive = false;
    };
  }, [...deps, tick]);
  return [data, error, () => setTick((n) => n + 1)];
}

export function StatusBadge({ status }: { status: string }) {
  return <span class={`badge badge-${status}`}>{status.replace(/_/g, " ")}</span>;
}
