"""Coverage per capability (lines + branches, as coverage.py counts them) and the floors that must hold.

Run after ``pytest --cov``: ``python -m tests.coverage_report [.coverage]``. Exits 1 when a floor is missed.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import PurePosixPath

from coverage import Coverage
from coverage.exceptions import NoDataError

# The critical components: the money path, the live call, the LLM router, agents.
FLOORS = {
    "billing": 90.0,
    "conversations": 90.0,
    "llm.router": 90.0,
    "agents": 90.0,
}

# The LLM router is these modules of llm/: routing and failover, its settings, provider health, continuation.
LLM_ROUTER_MODULES = {"router.py", "router_config.py", "health.py", "continuation.py"}


def _group(path: str) -> list[str]:
    parts = PurePosixPath(path).parts
    inner = parts[parts.index("airies") + 1 :]
    if len(inner) == 1:
        return ["(package)"]
    groups = [inner[0]]
    if inner[0] == "llm" and inner[1] in LLM_ROUTER_MODULES:
        groups.append("llm.router")
    return groups


def main(argv: list[str]) -> int:
    cov = Coverage(data_file=argv[0] if argv else ".coverage")
    cov.load()
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # covered, total (statements + branch outcomes)
    try:
        files = cov.get_data().measured_files()
    except NoDataError:
        print("no coverage data: run pytest with --cov first", file=sys.stderr)
        return 1
    for filename in sorted(files):
        if "/airies/" not in filename:
            continue
        analysis = cov._analyze(filename)  # the public report API only prints; this is what it reads
        numbers = analysis.numbers
        covered = numbers.n_executed + numbers.n_executed_branches
        total = numbers.n_statements + numbers.n_branches
        for group in _group(filename):
            totals[group][0] += covered
            totals[group][1] += total
    failed = []
    print(f"{'capability':16} {'coverage':>9} {'floor':>6}")
    for group, (covered, total) in sorted(totals.items()):
        percent = 100.0 * covered / total if total else 100.0
        floor = FLOORS.get(group)
        mark = ""
        if floor is not None and percent < floor:
            failed.append(group)
            mark = "  BELOW FLOOR"
        print(f"{group:16} {percent:8.1f}% {'' if floor is None else f'{floor:.0f}%':>6}{mark}")
    missing = [group for group in FLOORS if group not in totals]
    if failed or missing:
        print(f"coverage floors not held: {', '.join(failed + missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
