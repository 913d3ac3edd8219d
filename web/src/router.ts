// A small history router: paths like /agents/agt_123/edit; the server answers index.html for them.
import { useEffect, useState } from "preact/hooks";

export function navigate(path: string, replace = false): void {
  if (replace) history.replaceState(null, "", path);
  else history.pushState(null, "", path);
  window.dispatchEvent(new Event("airies:navigate"));
}

export function usePath(): string {
  const [path, setPath] = useState(window.location.pathname + window.location.search);
  useEffect(() => {
    const update = () => setPath(window.location.pathname + window.location.search);
    window.addEventListener("popstate", update);
    window.addEventListener("airies:navigate", update);
    return () => {
      window.removeEventListener("popstate", update);
      window.removeEventListener("airies:navigate", update);
    };
  }, []);
  return path;
}

/** "/agents/:id/edit" against "/agents/agt_1/edit" -> {id: "agt_1"}; null when it does not match. */
export function match(pattern: string, path: string): Record<string, string> | null {
  const pathname = path.split("?")[0].replace(/\/+$/, "") || "/";
  const want = pattern.split("/");
  const got = pathname.split("/");
  if (want.length !== got.length) return null;
  const params: Record<string, string> = {};
  for (let i = 0; i < want.length; i++) {
    if (want[i].startsWith(":")) params[want[i].slice(1)] = decodeURIComponent(got[i]);
    else if (want[i] !== got[i]) return null;
  }
  return params;
}

export function queryParam(name: string): string | null {
  return new URLSearchParams(window.location.search).get(name);
}

/** Link click without a page load (modifier keys keep the browser's own behaviour). */
export function onLink(event: MouseEvent, path: string): void {
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.button !== 0) return;
  event.preventDefault();
  navigate(path);
}
