"""Who imports what at cold start: parse ``python -X importtime`` and attribute third-party cost to our modules.

``python -m benchmarks.importtime ApiFunction`` prints, for one fresh process, every place where first-party code
(the handler or an ``airies`` module) imports a third-party package, with that import's cumulative time.
``bench_cold_start`` attaches the top entries to its JSON so a missed target names its causes.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Set
from dataclasses import dataclass, field
from typing import Any

from benchmarks import harness


@dataclass
class Node:
    name: str
    self_us: int
    cumulative_us: int
    depth: int
    children: list[Node] = field(default_factory=list)


def parse(stderr: str) -> list[Node]:
    """The import tree (roots in order). importtime prints a module after its children (post-order)."""
    pending: list[Node] = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cumulative_us, raw_name = line[len("import time:") :].split("|", 2)
        depth = (len(raw_name) - len(raw_name.lstrip(" ")) - 1) // 2
        node = Node(raw_name.strip(), int(self_us), int(cumulative_us), depth)
        while pending and pending[-1].depth > depth:
            node.children.insert(0, pending.pop())
        pending.append(node)
    return pending


def _package(name: str) -> str:
    return name.split(".", 1)[0]


def _first_party(name: str, local_modules: Set[str]) -> bool:
    return _package(name) == "airies" or _package(name) in local_modules


def third_party_entries(roots: list[Node], local_modules: Set[str] = frozenset()) -> list[dict[str, Any]]:
    """(importer, package, ms) for each import of a third-party package made directly by first-party code."""
    stdlib = set(sys.stdlib_module_names)
    entries: list[dict[str, Any]] = []

    def walk(node: Node, importer: str) -> None:
        for child in node.children:
            visit(child, importer if not _first_party(node.name, local_modules) else node.name)

    def visit(node: Node, importer: str) -> None:
        package = _package(node.name)
        if _first_party(node.name, local_modules):
            walk(node, node.name)
        elif package not in stdlib and node.cumulative_us >= 1000:
            entries.append({"importer": importer, "module": node.name, "ms": round(node.cumulative_us / 1000, 1)})
        else:
            walk(node, importer)

    for root in roots:
        visit(root, "<handler>")
    entries.sort(key=lambda entry: entry["ms"], reverse=True)
    return entries


def first_party_costs(roots: list[Node]) -> list[dict[str, Any]]:
    """airies modules by self time (their own module body: models, schemas, catalogs)."""
    costs: list[dict[str, Any]] = []

    def visit(node: Node) -> None:
        if _package(node.name) == "airies" and node.self_us >= 2000:
            costs.append({"module": node.name, "self_ms": round(node.self_us / 1000, 1)})
        for child in node.children:
            visit(child)

    for root in roots:
        visit(root)
    costs.sort(key=lambda entry: entry["self_ms"], reverse=True)
    return costs


def profile(code: str, env: dict[str, str] | None, *, python: str = sys.executable) -> list[Node]:
    completed = subprocess.run(
        [python, "-X", "importtime", "-c", code],
        capture_output=True, text=True, env=env, cwd=harness.ROOT, timeout=120, check=False,
    )  # fmt: skip
    if completed.returncode != 0:
        raise RuntimeError(completed.stderr[-3000:])
    return parse(completed.stderr)


def main(argv: list[str]) -> int:
    from airies.local.template import function_specs, local_context
    from benchmarks.bench_cold_start import _function_env, _handler_snippet

    ctx = local_context()
    specs = function_specs(ctx.template)
    for logical_id in argv or list(specs):
        spec = specs[logical_id]
        local = {p.stem for p in spec.code_uri.glob("*.py")} | {p.name for p in spec.code_uri.iterdir() if p.is_dir()}
        roots = profile(_handler_snippet(spec), _function_env(spec, ctx))
        print(f"\n{logical_id}: third-party imports made by our code (cumulative ms, one fresh process)")
        for entry in third_party_entries(roots, local)[:15]:
            print(f"  {entry['ms']:>7.1f}  {entry['importer']} -> {entry['module']}")
        print("  our modules' own body time (self ms):")
        for entry in first_party_costs(roots)[:8]:
            print(f"  {entry['self_ms']:>7.1f}  {entry['module']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
