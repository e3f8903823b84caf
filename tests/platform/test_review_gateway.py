"""Review: the gateway builds HTTP replies from guest values; a hostile value is a 502."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

from trapeze.gateway.auth import Caller
from trapeze.gateway.http import GatewayRoute, build_app
from trapeze.runtime.invoker import InvocationResult


class _Anyone:
    def authenticate(self, headers: Any, *, anonymous_ok: bool) -> Caller:
        return Caller(None, "public", "public")


class _Backend:
    authenticator = _Anyone()
    value: Any = None

    def invoke(self, function: str, event: Any, **kw: Any) -> InvocationResult:
        return InvocationResult("ok", value=self.value, request_id=kw["request_id"])

    def logs_visible_to(self, label: str, function: str | None) -> list[dict[str, Any]]:
        return []

    def audit_visible_to(self, label: str) -> list[dict[str, Any]]:
        return []


@pytest.mark.parametrize("value", [
    {"a": b"bytes in a map"},
    float("nan"),
    {"statusCode": 200, "headers": {"x-a": "\u20ac"}, "body": "hi"},
    {"statusCode": 200, "body": [b"bytes in a list"]},
], ids=["bytes-in-json", "nan", "non-latin1-header", "bytes-in-body"])
def test_unsendable_values_are_a_502_not_a_crash(value: Any) -> None:
    backend = _Backend()
    backend.value = value
    app = build_app(backend, [GatewayRoute("/f", ["GET"], "f", anonymous=True)],
                    new_request_id=lambda: "rid")
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/f")
    assert r.status_code == 502, r.text
    assert r.headers["x-trapeze-request-id"] == "rid"
    assert "cannot be sent" in r.json()["error"]


def test_a_function_cannot_override_the_gateways_headers() -> None:
    backend = _Backend()
    backend.value = {"statusCode": 200, "body": "hi",
                     "headers": {"X-Trapeze-Status": "withheld", "Content-Length": "1"}}
    app = build_app(backend, [GatewayRoute("/f", ["GET"], "f", anonymous=True)],
                    new_request_id=lambda: "rid")
    with TestClient(app) as client:
        r = client.get("/f")
    assert r.status_code == 200 and r.text == "hi"
    assert r.headers["x-trapeze-status"] == "ok"


def test_non_json_event_is_refused_with_what_was_wrong(running: Any) -> None:
    # Found in review: a tuple or an object as the event failed deep in the sandbox as
    # "internal error (ProtocolError)". The API refuses it up front and says why.
    for event, named in (((1, 2), "tuple"), ({"when": object()}, "object"),
                         ({1: "int key"}, "non-string key")):
        res = running.invoke("echo", event, as_label="public")
        assert res.status == "refused", res
        assert named in res.error and "JSON-compatible" in res.error
    assert running.invoke("echo", {"ok": [1, b"x"]}, as_label="public").ok
