"""The stack serves the web app from the API function, and CORS stays the app's (only the widget's origins)."""

from __future__ import annotations

from airies.core.config import PROJECT_ROOT
from airies.local.template import load_template


def test_api_function_serves_the_web_app_and_api_gateway_adds_no_cors() -> None:
    template = load_template(PROJECT_ROOT / "template.yaml")
    events = template["Resources"]["ApiFunction"]["Properties"]["Events"]
    routes = {(e["Properties"]["Method"], e["Properties"]["Path"]) for e in events.values() if e["Type"] == "HttpApi"}
    assert {("ANY", "/api/v1/{proxy+}"), ("GET", "/{proxy+}"), ("GET", "/")} <= routes
    # API Gateway's own CORS would answer every preflight for every origin and override the widget's answers.
    assert "CorsConfiguration" not in template["Resources"]["HttpApi"]["Properties"]
