"""Unzipped size of every function as Lambda counts it (its code + all its layers) after ``sam build``.

    python -m airies.local.build_report [--build-dir .aws-sam/build] [--template template.yaml]

Lambda refuses a function whose code and layers together exceed 250 MB unzipped (262,144,000 bytes), and counts a
file once per layer that ships it. The report lists each layer, then each function with its layers, largest
first, and exits 1 when one is over the limit (``make build`` fails then) or a built directory is missing.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airies.core.config import PROJECT_ROOT
from airies.local.template import DEFAULT_TEMPLATE, load_template

LAMBDA_UNZIPPED_LIMIT = 262_144_000  # bytes: "250 MB" for a function's code plus all its layers
MB = 1024 * 1024


@dataclass(frozen=True)
class FunctionSize:
    logical_id: str
    code_bytes: int
    layers: dict[str, int]  # layer logical id -> bytes

    @property
    def total(self) -> int:
        return self.code_bytes + sum(self.layers.values())


def tree_bytes(path: Path) -> int:
    if not path.is_dir():
        raise FileNotFoundError(f"{path} was not built (run sam build)")
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def function_layers(template: dict[str, Any]) -> dict[str, list[str]]:
    """Layer logical ids of every function (Globals first, as SAM merges them)."""
    globals_layers = ((template.get("Globals") or {}).get("Function") or {}).get("Layers") or []
    out = {}
    for logical_id, resource in (template.get("Resources") or {}).items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        layers = [*globals_layers, *((resource.get("Properties") or {}).get("Layers") or [])]
        out[logical_id] = [layer["Ref"] for layer in layers if isinstance(layer, dict) and "Ref" in layer]
    return out


def measure(template: dict[str, Any], build_dir: Path) -> tuple[dict[str, int], list[FunctionSize]]:
    layers_of = function_layers(template)
    layer_sizes = {
        layer: tree_bytes(build_dir / layer) for layer in sorted({x for ls in layers_of.values() for x in ls})
    }
    sizes = [
        FunctionSize(fn, tree_bytes(build_dir / fn), {layer: layer_sizes[layer] for layer in layers})
        for fn, layers in layers_of.items()
    ]
    return layer_sizes, sorted(sizes, key=lambda s: s.total, reverse=True)


def report(layer_sizes: dict[str, int], sizes: list[FunctionSize], limit: int = LAMBDA_UNZIPPED_LIMIT) -> list[str]:
    lines = ["Layers (unzipped):"]
    lines += [f"  {name:<16} {size / MB:7.1f} MB" for name, size in layer_sizes.items()]
    lines.append(f"Functions (code + layers, unzipped; Lambda's limit {limit / MB:.0f} MB):")
    for size in sizes:
        flag = "  OVER THE LIMIT" if size.total > limit else ""
        lines.append(
            f"  {size.logical_id:<24} {size.total / MB:7.1f} MB  (code {size.code_bytes / MB:.1f} MB + "
            f"{' + '.join(size.layers) or 'no layers'}){flag}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build-dir", type=Path, default=PROJECT_ROOT / ".aws-sam" / "build")
    parser.add_argument("--template", type=Path, default=DEFAULT_TEMPLATE)
    args = parser.parse_args(argv)
    try:
        layer_sizes, sizes = measure(load_template(args.template), args.build_dir)
    except FileNotFoundError as exc:
        print(f"build report: {exc}", file=sys.stderr)
        return 1
    print("\n".join(report(layer_sizes, sizes)))
    over = [s.logical_id for s in sizes if s.total > LAMBDA_UNZIPPED_LIMIT]
    if over:
        print(f"over Lambda's unzipped limit: {', '.join(over)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
