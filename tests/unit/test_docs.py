"""The documentation stays true to the tree: README.md and docs/*.md link only to files and headings that exist,
name only repository paths that exist, call only routes the OpenAPI document has, and every setting is documented."""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

from airies.api.app import create_app
from airies.core.config import PROJECT_ROOT, Settings

DOCS = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]
PACKAGE = PROJECT_ROOT / "layers" / "common" / "airies"
CONFIGURATION = PROJECT_ROOT / "docs" / "configuration.md"
FENCE = re.compile(r"^```.*?^```[^\n]*$", flags=re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
REPO_ROOTS = ("layers/", "functions/", "tests/", "infra/", "benchmarks/", "web/", "examples/", "docs/", ".ci/")
REPO_FILES = {"template.yaml", "samconfig.toml", "pyproject.toml", "Makefile", "README.md"}
API_PATH = re.compile(r"(?:\$API|/api/v1)(/[^\s\"'?\\)`,]*)")
SERVED_OUTSIDE_OPENAPI = {"/docs", "/openapi.json"}


def doc_id(path: Path) -> str:
    return str(path.relative_to(PROJECT_ROOT))


def prose(text: str) -> str:
    """The text outside fenced code blocks."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]{2,}|`", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@cache
def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for line in prose(path.read_text()).splitlines():
        match = re.match(r"#{1,6} (.+)", line)
        if match:
            base = slug(match.group(1))
            anchor, n = base, 0
            while anchor in found:
                n += 1
                anchor = f"{base}-{n}"
            found.add(anchor)
    return found


def test_slugs_follow_github() -> None:
    assert slug("A five-minute tour") == "a-five-minute-tour"
    assert slug("URLs an account supplies (the URL guard)") == "urls-an-account-supplies-the-url-guard"
    assert slug("An account's own endpoints") == "an-accounts-own-endpoints"
    assert slug("cold_start") == "cold_start"


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_relative_links_point_to_existing_files_and_headings(doc: Path) -> None:
    broken = []
    for target in LINK.findall(prose(doc.read_text())):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked here
            continue
        file_part, _, anchor = target.partition("#")
        destination = (doc.parent / file_part).resolve() if file_part else doc
        if not destination.exists():
            broken.append(f"{target}: no such file")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{target}: no heading '#{anchor}' in {doc_id(destination)}")
    assert broken == []


def ignored_by_git(path: str) -> bool:
    """Build output and local data (gitignored) exist only after a build or a run."""
    return subprocess.run(["git", "check-ignore", "-q", path], cwd=PROJECT_ROOT).returncode == 0


def repository_path(token: str) -> Path | None:
    """Where a path named in the docs should be, or None when the token is not a repository path."""
    if any(mark in token for mark in ("<", "{", "...", "$", " ", "|")) or token.startswith(("/", ".", "~")):
        return None
    token = token.split("::")[0].rstrip("/")
    if token in REPO_FILES or token.startswith(REPO_ROOTS):
        return PROJECT_ROOT / token
    if token.startswith("airies/"):
        return PACKAGE.parent / token
    first = token.split("/")[0]
    if "/" in token and (PACKAGE / first).is_dir():  # capability-relative: core/config.py, voice/stt/
        return PACKAGE / token
    return None


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_paths_named_in_the_docs_exist(doc: Path) -> None:
    missing = []
    for token in CODE_SPAN.findall(prose(doc.read_text())):
        path = repository_path(token)
        if path is None or ignored_by_git(str(path)) or ignored_by_git(f"{path}/"):  # a folder not built yet
            continue
        if "*" in token:
            if not list(PROJECT_ROOT.glob(str(path.relative_to(PROJECT_ROOT)))):
                missing.append(token)
        elif not path.exists():
            missing.append(token)
    assert missing == []


@cache
def openapi_paths() -> list[list[str]]:
    prefix = "/api/v1"
    return [path.removeprefix(prefix).strip("/").split("/") for path in create_app().openapi()["paths"]]


def placeholder(segment: str) -> bool:
    """``$KB``, ``KEY_ID``, ``conv_...``, ``{id}``: a segment the reader fills in."""
    return segment.startswith(("$", "{", "<")) or "..." in segment or bool(re.fullmatch(r"[A-Z_]+", segment))


def is_route(path: str) -> bool:
    """A path as the docs write it (``/agents/$AGENT/deploy``) matches a route of the OpenAPI document."""
    if path.rstrip("/") in SERVED_OUTSIDE_OPENAPI:
        return True
    segments = path.strip("/").split("/")
    return any(
        len(route) == len(segments)
        and all(
            part == mine or part.startswith("{") or placeholder(mine)
            for part, mine in zip(route, segments, strict=True)
        )
        for route in openapi_paths()
    )


def test_route_matching_is_strict() -> None:
    assert is_route("/agents/$AGENT/deploy") and is_route("/provider-keys/groq") and is_route("/health")
    assert not is_route("/agents/$AGENT/publish") and not is_route("/agents/x/deploy/now")


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_routes_in_the_docs_are_in_the_openapi_document(doc: Path) -> None:
    paths = [path for path in API_PATH.findall(doc.read_text()) if "*" not in path and path != "/"]
    assert [path for path in paths if not is_route(path)] == []


def setting_names(name: str) -> list[str]:
    field = Settings.model_fields[name]
    alias = field.validation_alias
    return list(getattr(alias, "choices", [])) if alias is not None else [f"AIRIES_{name.upper()}"]


def test_every_setting_is_documented_in_configuration_md() -> None:
    text = CONFIGURATION.read_text()
    undocumented = [name for name in Settings.model_fields if not any(env in text for env in setting_names(name))]
    assert undocumented == []


def test_every_variable_the_docs_name_exists() -> None:
    """A documented ``AIRIES_*`` variable is a setting, or read by the code, the tests or the template."""
    known = {env for name in Settings.model_fields for env in setting_names(name)}
    sources = [PROJECT_ROOT / "template.yaml"]
    for root in ("layers", "functions", "tests", "benchmarks"):
        sources += [p for p in (PROJECT_ROOT / root).rglob("*.py") if "webapp/dist" not in str(p)]
    code = "\n".join(p.read_text(errors="ignore") for p in sources if p.resolve() != Path(__file__).resolve())
    named = {name for doc in DOCS for name in re.findall(r"\bAIRIES_[A-Z0-9][A-Z0-9_]*", doc.read_text())}
    assert sorted(name for name in named - known if not re.search(rf"\b{name}\b", code)) == []
    config_text = CONFIGURATION.read_text()
    assert sorted(name for name in named if name not in config_text) == [], "configuration.md lists every variable"
