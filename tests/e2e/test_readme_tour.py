"""The README's five-minute tour runs as written.

The tour's ``bash`` blocks are taken from README.md and run in order, in one bash (``set -euo pipefail``), against
the local stack started as ``make run`` starts it (``tests/local_stack.py``), from a folder laid out like the
repository after ``make run``: ``examples/``, ``.venv/`` and ``.data/dev_api_key``. The only change made to the text
is the port of ``http://127.0.0.1:8000``. A block fails the test when a command fails, when it prints an error JSON,
or when its output lacks what its ``# -> ...`` lines show (``...`` stands for anything; whitespace is ignored, so
JSON may be compact or spaced and the call client's waterfall bars may be of any length).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from airies.core.config import PROJECT_ROOT
from tests.local_stack import local_server

README = PROJECT_ROOT / "README.md"
TOUR_HEADING = "## A five-minute tour"
DEFAULT_BASE = "http://127.0.0.1:8000"
KEY = "ak_live_devkey_for_the_readme_tour"
ERROR_JSON = re.compile(r'"error"\s*:\s*\{')
BLOCK_MARK = "@@ tour block {} @@"


def tour_blocks(markdown: str) -> list[str]:
    """The ``bash`` blocks of the tour section, in order."""
    assert TOUR_HEADING in markdown, f"README.md has no '{TOUR_HEADING}' section"
    section = markdown.split(TOUR_HEADING, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```bash\n(.*?)^```", section, flags=re.S | re.M)


def expected_outputs(block: str) -> list[list[str]]:
    """Each ``# -> ...`` line as the fragments (split at ``...``) that must appear in the output, in order."""
    expectations = []
    for line in block.splitlines():
        if line.startswith("# -> "):
            fragments = [loose(part) for part in line.removeprefix("# -> ").split("...")]
            expectations.append([fragment for fragment in fragments if fragment])
    return expectations


def loose(text: str) -> str:
    return "".join(text.split())


def missing_output(output: str, expectations: list[list[str]]) -> str | None:
    """The first expected fragment not found (after the previous ones), or None."""
    text, position = loose(output), 0
    for fragments in expectations:
        for fragment in fragments:
            found = text.find(fragment, position)
            if found < 0:
                return fragment
            position = found + len(fragment)
    return None


def test_the_tour_defines_each_variable_once_and_runs_against_make_run_s_address() -> None:
    blocks = tour_blocks(README.read_text())
    assert len(blocks) >= 4, "the tour lost its blocks"
    assigned = Counter(
        match.group(1) for block in blocks for match in re.finditer(r"^\s*([A-Za-z_]\w*)=", block, flags=re.M)
    )
    assert [name for name, count in assigned.items() if count > 1] == [], "define each tour variable once"
    assert sum(block.count(DEFAULT_BASE) for block in blocks) == 1, "the tour names make run's address once (BASE)"
    assert all(expected_outputs(block) for block in blocks), "every tour block shows what it prints"


def test_expected_output_matching_is_strict_about_order_and_content() -> None:
    expectations = expected_outputs('curl x\n# -> {"id":"agt_...","status": "ready"}\n# -> done')
    assert missing_output('{"id":"agt_1","status":"ready"}\n  done', expectations) is None
    assert missing_output('{"id":"agt_1","status":"failed"} done', expectations) == '","status":"ready"}'
    assert missing_output('done {"id":"agt_1","status": "ready"}', expectations) == "done"


@pytest.mark.slow
def test_the_readme_tour_runs_as_written(tmp_path: Path) -> None:
    blocks = tour_blocks(README.read_text())
    workdir = tmp_path / "airies"
    workdir.mkdir()
    (workdir / "examples").symlink_to(PROJECT_ROOT / "examples")
    (workdir / ".venv").symlink_to(Path(sys.prefix))
    (workdir / ".data").mkdir()
    (workdir / ".data" / "dev_api_key").write_text(KEY)

    with local_server(workdir, KEY) as server:
        script = ["set -euo pipefail"]
        for number, block in enumerate(blocks):
            script += [f"printf '\\n{BLOCK_MARK.format(number)}\\n'", block.replace(DEFAULT_BASE, server.base)]
        environment = {k: v for k, v in os.environ.items() if not k.startswith(("AIRIES_", "DATABASE_URL", "AWS_"))}
        environment.pop("VIRTUAL_ENV", None)
        run = subprocess.run(
            ["bash", "-c", "\n".join(script)], cwd=workdir, env=environment, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, timeout=300,
        )  # fmt: skip

    output = run.stdout
    outputs = re.split(r"^@@ tour block (\d+) @@$", output, flags=re.M)
    by_block = {int(outputs[i]): outputs[i + 1] for i in range(1, len(outputs), 2)}
    ran = max(by_block, default=-1)
    assert run.returncode == 0, f"tour block {ran + 1} failed (exit {run.returncode}):\n{blocks[ran]}\n---\n{output}"
    assert sorted(by_block) == list(range(len(blocks))), output
    for number, block in enumerate(blocks):
        printed = by_block[number]
        assert not ERROR_JSON.search(printed), f"tour block {number + 1} printed an error:\n{block}\n---\n{printed}"
        missing = missing_output(printed, expected_outputs(block))
        assert missing is None, f"tour block {number + 1} did not print {missing!r}:\n{block}\n---\n{printed}"
    assert (workdir / "reply.wav").stat().st_size > 16000  # the call client wrote the agent's audio
