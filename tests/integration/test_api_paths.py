"""Unknown and slash-variant paths answer the JSON error shape (on both databases, through the real app)."""

from __future__ import annotations

ROUTES_WITH_SLASH = [
    ("get", "/api/v1/knowledge-bases/{kb}/documents/"),
    ("get", "/api/v1/knowledge-bases/"),
    ("post", "/api/v1/knowledge-bases/"),
    ("get", "/api/v1/knowledge-bases/{kb}/"),
    ("get", "/api/v1/agents/"),
    ("post", "/api/v1/agents/"),
    ("get", "/api/v1/health/"),
    ("get", "/api/v1/conversations/"),
    ("get", "/api/v1/usage//"),
]


def test_trailing_slash_is_a_json_404_naming_the_route(client, auth):
    """No 307 with an empty body: a JSON 404 whose message and details name the path without the slash."""
    kb = client.post("/api/v1/knowledge-bases", json={"name": "Docs"}, headers=auth).json()["id"]
    for method, path in ROUTES_WITH_SLASH:
        url = path.format(kb=kb)
        kwargs = {"json": {}} if method == "post" else {}
        response = getattr(client, method)(url, headers=auth, follow_redirects=False, **kwargs)
        assert response.status_code == 404, (url, response.status_code, response.text)
        error = response.json()["error"]
        assert error["code"] == "not_found" and url in error["message"]
        assert error["details"]["path"] == url.rstrip("/")
        assert getattr(client, method)(url.rstrip("/"), headers=auth, **kwargs).status_code != 404  # it exists


def test_unknown_paths_are_json_404(client, auth):
    # Outside /api/v1 the web app answers (tests/integration/test_webapp_serving.py).
    for path in ("/api/v1", "/api/v1/nope", "/api/v1/knowledge-bases/kb_x/documents/d/x"):
        response = client.get(path, headers=auth, follow_redirects=False)
        assert response.status_code == 404 and response.headers["content-type"] == "application/json", path
        assert response.json()["error"] == {"code": "not_found", "message": f"no route GET {path}", "details": None}


def test_wrong_method_is_a_json_405_listing_every_allowed_method(client, auth):
    response = client.delete("/api/v1/knowledge-bases", headers=auth)
    assert response.status_code == 405
    error = response.json()["error"]
    assert error["code"] == "method_not_allowed" and error["details"] == {"allowed": ["GET", "POST"]}
    assert response.headers["allow"] == "GET, POST"
    patched = client.patch("/api/v1/health/", headers=auth)  # a slash variant with a wrong method: still JSON
    assert patched.status_code == 404 and patched.json()["error"]["code"] == "not_found"
