"""The web app served by the API's FastAPI app: built files with their caching headers, the SPA fallback for the
app's own paths, and the API's JSON 404 kept for /api/v1/* (never swallowed by the page)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from airies.api.app import create_app
from airies.core.config import Settings
from airies.webapp import CONTENT_SECURITY_POLICY, IMMUTABLE


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    root = tmp_path / "dist"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><div id=app></div>")
    (root / "assets" / "index-abc123.js").write_text("console.log('app')")
    (root / "widget.js").write_text("/* widget */")
    (tmp_path / "secret.txt").write_text("outside dist")
    return root


def make_client(tmp_path: Path, dist: Path | None, **overrides: object) -> TestClient:
    settings = Settings(data_dir=tmp_path, web_dist_dir=dist, **overrides)
    return TestClient(create_app(settings, database=_NoDatabase()))  # type: ignore[arg-type]


class _NoDatabase:
    """Static files and 404s never touch the database."""


def test_index_and_app_routes_serve_the_page_with_revalidation(tmp_path: Path, dist: Path) -> None:
    client = make_client(tmp_path, dist)
    for path in ("/", "/agents", "/agents/agt_123", "/talk/agt_1?x=1", "/conversations/conv_1"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.text == "<!doctype html><div id=app></div>"
        assert response.headers["content-type"].startswith("text/html")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert response.headers["x-frame-options"] == "DENY"


def test_hashed_assets_are_immutable_and_etag_revalidates(tmp_path: Path, dist: Path) -> None:
    client = make_client(tmp_path, dist)
    response = client.get("/assets/index-abc123.js")
    assert response.status_code == 200
    assert response.text == "console.log('app')"
    assert response.headers["cache-control"] == IMMUTABLE
    assert "javascript" in response.headers["content-type"]
    etag = response.headers["etag"]
    again = client.get("/assets/index-abc123.js", headers={"if-none-match": etag})
    assert again.status_code == 304 and again.content == b""
    head = client.head("/widget.js")
    assert head.status_code == 200 and head.headers["content-length"] == str(len("/* widget */"))
    assert head.headers["cache-control"] == "public, max-age=300"


def test_api_paths_keep_their_json_404_and_missing_files_are_not_the_page(tmp_path: Path, dist: Path) -> None:
    client = make_client(tmp_path, dist)
    for path in ("/api/v1/no-such-route", "/api/v1", "/api/v1/agents/x/nothing/here", "/ws-management/x"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"
    missing = client.get("/assets/index-old.js")
    assert missing.status_code == 404 and "<div id=app>" not in missing.text
    # Other methods than GET/HEAD on a page path are no page either.
    assert client.post("/agents").status_code == 404


@pytest.mark.parametrize("path", ["/../secret.txt", "/assets/../../secret.txt", "/%2e%2e/secret.txt", "/.hidden"])
def test_nothing_outside_the_built_folder_is_served(tmp_path: Path, dist: Path, path: str) -> None:
    response = make_client(tmp_path, dist).get(path)
    assert "outside dist" not in response.text


def test_unbuilt_app_says_how_to_build_it(tmp_path: Path) -> None:
    response = make_client(tmp_path, tmp_path / "missing").get("/agents")
    assert response.status_code == 503 and "make web" in response.text


def test_dev_key_is_offered_only_on_the_local_stage(tmp_path: Path, dist: Path) -> None:
    local = make_client(tmp_path, dist, dev_api_key="ak_live_dev")
    assert local.get("/app-config.json").json() == {
        "stage": "local",
        "api_base_path": "/api/v1",
        "dev_api_key": "ak_live_dev",
    }
    deployed = make_client(tmp_path, dist, dev_api_key="ak_live_dev", stage="prod")
    config = deployed.get("/app-config.json")
    assert config.json()["dev_api_key"] is None and config.headers["cache-control"] == "no-store"
