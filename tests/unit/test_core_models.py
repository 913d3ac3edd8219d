"""The ORM model modules: their annotations are evaluated when each class is built, and every mapper configures."""

from __future__ import annotations

import ast
import importlib

from sqlalchemy.orm import configure_mappers

from airies.core.config import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "layers" / "common" / "airies"


def _model_modules() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "migrations" in path.parts or "Mapped[" not in path.read_text():
            continue
        found.append(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
    return found


def test_model_modules_do_not_postpone_their_annotations() -> None:
    modules = _model_modules()
    assert "airies.billing.models" in modules and "airies.core.models" in modules
    postponed = []
    for name in modules:
        tree = ast.parse((PACKAGE.parent / (name.replace(".", "/") + ".py")).read_text())
        if any(
            isinstance(node, ast.ImportFrom)
            and node.module == "__future__"
            and any(a.name == "annotations" for a in node.names)
            for node in tree.body
        ):
            postponed.append(name)
    assert postponed == [], "SQLAlchemy would eval each Mapped[...] string at class creation (airies.core.models)"


def test_every_model_module_imports_and_its_mappers_configure() -> None:
    for name in _model_modules():
        importlib.import_module(name)
    configure_mappers()
