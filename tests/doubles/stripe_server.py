"""Local Stripe doubles for the billing tests.

1. ``StripeInvoiceDouble``: a small wire-level server for what localstripe lacks — idempotency keys (on
   customers, PaymentIntents, invoices), invoices created with
   ``auto_advance``/``collection_method``/``pending_invoice_items_behavior``, ``POST /v1/invoices/{id}/finalize``,
   invoice items attached to an invoice — plus customers. It speaks Stripe's wire format (form-encoded
   bodies with bracketed keys, Bearer auth, JSON answers, ``{"error": {...}}`` errors) and honours
   ``Idempotency-Key`` the way Stripe does: a repeated key replays the first answer; the same key with
   different parameters is a 400 ``idempotency_error``. It can be told to fail requests (``fail_next``).
   Subscriptions too (create/retrieve, payment methods attached and set as the customer's default): a card in
   ``declined_cards`` is refused at attach (402 ``card_error``, remembered under its idempotency key like Stripe
   does), one in ``failing_cards`` attaches but leaves the subscription ``incomplete``; tests move a
   subscription's status (``set_subscription_status``) the way Stripe's billing would.

2. ``LocalStripe``: the ``localstripe`` emulator (PyPI) as a subprocess. localstripe binds every interface
   and persists to /tmp/localstripe.pickle when run through its own CLI; this launcher serves its aiohttp
   app on 127.0.0.1 only (port 0 -> a free port) and disables the pickle dump.
"""

from __future__ import annotations

import itertools
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.doubles._wire import JsonServer


def unflatten(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """``items[0][plan]=x&metadata[k]=v`` -> ``{"items": [{"plan": "x"}], "metadata": {"k": "v"}}``."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        parts = re.findall(r"[^\[\]]+", key)
        node: Any = out
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
    return _lists(out)


def _lists(node: Any) -> Any:
    if isinstance(node, dict):
        node = {k: _lists(v) for k, v in node.items()}
        if node and all(k.isdigit() for k in node):
            return [node[k] for k in sorted(node, key=int)]
    return node


class StripeInvoiceDouble(JsonServer):
    def __init__(self, api_key: str = "sk_test_double") -> None:
        self.api_key = api_key
        self.customers: dict[str, dict[str, Any]] = {}
        self.invoices: dict[str, dict[str, Any]] = {}
        self.items: dict[str, dict[str, Any]] = {}
        self.payment_intents: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, dict[str, Any], str | None]] = []
        self._idem: dict[str, tuple[str, dict[str, Any], int, dict[str, Any]]] = {}
        self._failures: deque[tuple[str, int]] = deque()
        self.reject_emails: set[str] = set()  # customer creation answers 400 for these (a permanent failure)
        self.subscriptions: dict[str, dict[str, Any]] = {}
        self.declined_cards: set[str] = {"pm_card_chargeDeclined"}  # attach answers 402 card_declined
        self.failing_cards: set[str] = {"pm_card_chargeCustomerFail"}  # attaches; the first payment then fails
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    # -- wire -------------------------------------------------------------------------------------
    def respond(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> tuple[Any, ...]:
        lowered = {k.lower(): v for k, v in headers.items()}
        split = urlsplit(path)
        params = unflatten(parse_qsl(raw.decode(), keep_blank_values=True) + parse_qsl(split.query))
        status, body = self.dispatch(
            method, split.path, params, lowered.get("authorization"), lowered.get("idempotency-key")
        )
        return status, body, {"request-id": f"req_{next(self._ids)}"}

    def fail_next(self, path_prefix: str, status: int = 500, times: int = 1) -> None:
        for _ in range(times):
            self._failures.append((path_prefix, status))

    def set_subscription_status(self, subscription_id: str, status: str) -> None:
        with self._lock:
            self.subscriptions[subscription_id]["status"] = status

    def count(self, method: str, path_regex: str) -> int:
        return sum(1 for m, p, _, _ in self.requests if m == method and re.fullmatch(path_regex, p))

    # -- protocol ---------------------------------------------------------------------------------
    def _error(self, status: int, message: str, kind: str = "invalid_request_error") -> tuple[int, dict[str, Any]]:
        return status, {"error": {"type": kind, "message": message}}

    def dispatch(
        self, method: str, path: str, params: dict[str, Any], auth: str | None, idem: str | None
    ) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests.append((method, path, params, idem))
            if auth != f"Bearer {self.api_key}":
                return self._error(401, "Invalid API Key provided", "invalid_request_error")
            for i, (prefix, status) in enumerate(self._failures):
                if path.startswith(prefix):
                    del self._failures[i]
                    return self._error(status, "injected failure", "api_error")
            if method == "POST" and idem:
                seen = self._idem.get(idem)
                if seen is not None:
                    if seen[0] != path or seen[1] != params:
                        return self._error(
                            400,
                            "Keys for idempotent requests can only be used with the same parameters",
                            "idempotency_error",
                        )
                    return seen[2], seen[3]
            status, body = self._route(method, path, params)
            # Like Stripe: failed validations are not saved, a request that ran (e.g. a card decline) is.
            if method == "POST" and idem and (status < 400 or status == 402):
                self._idem[idem] = (path, params, status, body)
            return status, body

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):08d}"

    def _route(self, method: str, path: str, p: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        now = int(time.time())
        if method == "POST" and path == "/v1/customers":
            if p.get("email") in self.reject_emails:
                return self._error(400, "Invalid email address")
            cus = {
                "id": self._new_id("cus"),
                "object": "customer",
                "email": p.get("email"),
                "name": p.get("name"),
                "metadata": p.get("metadata", {}),
                "created": now,
                "livemode": False,
            }
            self.customers[cus["id"]] = cus
            return 200, cus
        if method == "GET" and path.startswith("/v1/customers/"):
            cus = self.customers.get(path.rsplit("/", 1)[1])
            return (200, cus) if cus else self._error(404, "No such customer")
        if method == "POST" and path.startswith("/v1/customers/"):
            cus = self.customers.get(path.rsplit("/", 1)[1])
            if cus is None:
                return self._error(404, "No such customer")
            if "invoice_settings" in p:
                cus["invoice_settings"] = {**cus.get("invoice_settings", {}), **p["invoice_settings"]}
            return 200, cus
        m = re.fullmatch(r"/v1/payment_methods/([^/]+)/attach", path)
        if method == "POST" and m:
            if p.get("customer") not in self.customers:
                return self._error(400, f"No such customer: '{p.get('customer')}'")
            if m.group(1) in self.declined_cards:
                return 402, {
                    "error": {"type": "card_error", "code": "card_declined", "message": "Your card was declined."}
                }
            return 200, {"id": m.group(1), "object": "payment_method", "customer": p["customer"], "type": "card"}
        if method == "POST" and path == "/v1/subscriptions":
            cus = self.customers.get(p.get("customer", ""))
            if cus is None:
                return self._error(400, f"No such customer: '{p.get('customer')}'")
            card = (cus.get("invoice_settings") or {}).get("default_payment_method")
            if not card:
                return self._error(400, "This customer has no attached payment source or default payment method.")
            end = now + 30 * 86400
            sub = {
                "id": self._new_id("sub"),
                "object": "subscription",
                "customer": cus["id"],
                "status": "incomplete" if card in self.failing_cards else "active",
                "metadata": p.get("metadata", {}),
                "cancel_at_period_end": False,
                "items": {
                    "object": "list",
                    "data": [{"plan": {"id": p["items"][0]["plan"]}, "current_period_end": end}],
                },
                "plan": {"id": p["items"][0]["plan"]},
                "current_period_end": end,
                "created": now,
                "livemode": False,
            }
            self.subscriptions[sub["id"]] = sub
            return 200, sub
        m = re.fullmatch(r"/v1/subscriptions/([^/]+)", path)
        if method == "GET" and m:
            sub = self.subscriptions.get(m.group(1))
            return (200, sub) if sub else self._error(404, "No such subscription")
        if method == "DELETE" and m:
            sub = self.subscriptions.get(m.group(1))
            if sub is None:
                return self._error(404, "No such subscription")
            sub["status"] = "incomplete_expired" if sub["status"] == "incomplete" else "canceled"
            return 200, sub
        if method == "POST" and path == "/v1/invoices":
            if p.get("customer") not in self.customers:
                return self._error(400, f"No such customer: '{p.get('customer')}'")
            if p.get("collection_method") == "send_invoice" and not p.get("days_until_due"):
                return self._error(400, "days_until_due is required for send_invoice")
            inv = {
                "id": self._new_id("in"),
                "object": "invoice",
                "customer": p["customer"],
                "status": "draft",
                "currency": p.get("currency", "usd"),
                "amount_due": 0,
                "total": 0,
                "description": p.get("description"),
                "metadata": p.get("metadata", {}),
                "auto_advance": p.get("auto_advance") == "true",
                "collection_method": p.get("collection_method", "charge_automatically"),
                "hosted_invoice_url": None,
                "created": now,
                "livemode": False,
                "lines": {"object": "list", "data": []},
            }
            self.invoices[inv["id"]] = inv
            return 200, inv
        m = re.fullmatch(r"/v1/invoices/([^/]+)(/finalize)?", path)
        if m:
            inv = self.invoices.get(m.group(1))
            if inv is None:
                return self._error(404, f"No such invoice: '{m.group(1)}'")
            if method == "GET" and not m.group(2):
                return 200, inv
            if method == "POST" and m.group(2):
                if inv["status"] != "draft":
                    return self._error(
                        400, "This invoice is already finalized, you can't re-finalize a non-draft invoice."
                    )
                inv["status"] = "open" if inv["amount_due"] > 0 else "paid"
                inv["hosted_invoice_url"] = f"https://invoice.stripe.test/{inv['id']}"
                return 200, inv
        if method == "POST" and path == "/v1/invoiceitems":
            inv = self.invoices.get(p.get("invoice", ""))
            if inv is None:
                return self._error(400, "No such invoice")
            if inv["status"] != "draft":
                return self._error(400, "You can only add invoice items to draft invoices")
            amount = int(p["amount"])
            item = {
                "id": self._new_id("ii"),
                "object": "invoiceitem",
                "amount": amount,
                "currency": p.get("currency"),
                "customer": p.get("customer"),
                "invoice": inv["id"],
                "description": p.get("description"),
                "metadata": p.get("metadata", {}),
            }
            self.items[item["id"]] = item
            inv["lines"]["data"].append(item)
            inv["amount_due"] += amount
            inv["total"] += amount
            return 200, item
        if method == "POST" and path == "/v1/payment_intents":
            pi_id = self._new_id("pi")
            pi = {
                "id": pi_id,
                "object": "payment_intent",
                "amount": int(p["amount"]),
                "currency": p.get("currency"),
                "customer": p.get("customer"),
                "status": "requires_payment_method",
                "client_secret": f"{pi_id}_secret_x",
                "metadata": p.get("metadata", {}),
                "livemode": False,
            }
            self.payment_intents[pi_id] = pi
            return 200, pi
        m = re.fullmatch(r"/v1/payment_intents/([^/]+)", path)
        if method == "GET" and m:
            pi = self.payment_intents.get(m.group(1))
            return (200, pi) if pi else self._error(404, "No such payment_intent")
        return self._error(404, f"Unrecognized request URL ({method}: {path})")


_LAUNCHER = """
import sys
from aiohttp import web
import localstripe.resources as resources
resources.Store.dump_to_disk = lambda self: None  # no shared /tmp pickle
from localstripe.server import app
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalStripe:
    """localstripe on 127.0.0.1:<free port> as a subprocess (any API key is accepted)."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> LocalStripe:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"localstripe exited: {self.proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("localstripe did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


if __name__ == "__main__":  # python -m tests.doubles.stripe_server [port]: localstripe on 127.0.0.1 for `make run`
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8420
    os.execv(sys.executable, [sys.executable, "-c", _LAUNCHER, str(port)])
