"""Review: the gateway builds HTTP replies from guest values; a hostile value is a 502."""

from __future__ import annotations

import socket
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from trapeze import App
from trapeze.errors import ConfigError
from trapeze.gateway import http as gateway_http
from trapeze.gateway.auth import Caller
from trapeze.gateway.http import GatewayRoute, build_app, connection_limit
from trapeze.runtime.invoker import InvocationResult


class _Anyone:
    def authenticate(self, headers: Any, *, anonymous_ok: bool) -> Caller:
        return Caller(None, "public", "public")


class _Backend:
    authenticator = _Anyone()
    value: Any = None

    def invoke(self, function: str, event: Any, **kw: Any) -> InvocationResult:
        return InvocationResult("ok", value=self.value, request_id=kw["request_id"])

    def logs_visible_to(self, label: str, function: str | None, *,
                        after: int | None = None) -> list[dict[str, Any]]:
        return []

    def audit_visible_to(self, label: str, *, after: int | None = None) -> list[dict[str, Any]]:
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


# ---------------------------------------------------------------- request bodies and connections
# Found in review: the gateway read a whole body before its admission check, with no time
# limit, so 400 slow anonymous connections each one byte short of 1 MiB held 459 MiB.

TIGHT_MANIFEST = """
[app]
name = "tight"

[labels]
bottom = ["public"]
public = ["top"]

[limits]
concurrency = 1
queue = 1

[functions.hello]
handler = "functions/f.py:hello"
timeout = 5

[[routes]]
path = "/hello"
methods = ["GET", "POST"]
function = "hello"
anonymous = true
max_body_bytes = 65536
"""

TIGHT_BODY_TIMEOUT = 3.0


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real runtime and gateway admitting 1 + 1 requests, with a 3 s body timeout."""
    tmp = tmp_path_factory.mktemp("tight")
    (tmp / "app" / "functions").mkdir(parents=True)
    (tmp / "app" / "trapeze.toml").write_text(TIGHT_MANIFEST)
    (tmp / "app" / "functions" / "f.py").write_text(
        "def hello(event, context):\n    return 'hi'\n")
    with pytest.MonkeyPatch.context() as mp:  # read once, when the gateway is built
        mp.setattr(gateway_http, "BODY_READ_TIMEOUT", TIGHT_BODY_TIMEOUT)
        rt = App.load(tmp / "app").start(store=f"sqlite:///{tmp / 'app.db'}", http=True)
    with rt:
        yield rt


def _partial_post(url: str, declared: int, sent: int) -> socket.socket:
    """A POST that declares `declared` body bytes and sends only `sent` of them."""
    u = urllib.parse.urlsplit(url)
    sock = socket.create_connection((u.hostname, u.port), timeout=5)
    sock.sendall(b"POST /hello HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\n"
                 + f"Content-Length: {declared}\r\n\r\n".encode() + b"a" * sent)
    return sock


def _status(sock: socket.socket, wait: float) -> int | None:
    """The status of the reply on `sock`, or None if none came within `wait` seconds."""
    sock.settimeout(wait)
    try:
        data = sock.recv(65536)
    except TimeoutError:
        return None
    return int(data.split()[1]) if data else None


def _hello_ok(rt: Any) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if httpx.post(rt.url + "/hello", content=b"x", timeout=10).status_code == 200:
            return True
        time.sleep(0.2)
    return False


def test_a_request_is_admitted_before_its_body_is_read(tight: Any) -> None:
    slow = [_partial_post(tight.url, 60000, 100) for _ in range(2)]
    try:
        time.sleep(0.5)  # both admitted (1 running + 1 queued), reading their bodies
        third = _partial_post(tight.url, 60000, 100)
        try:
            # Refused at once, its body unread, while the other two are still sending.
            assert _status(third, TIGHT_BODY_TIMEOUT - 1) == 503
        finally:
            third.close()
    finally:
        for sock in slow:
            sock.close()
    assert _hello_ok(tight)


def test_a_body_that_does_not_arrive_in_time_is_a_408(tight: Any) -> None:
    sock = _partial_post(tight.url, 60000, 100)
    try:
        start = time.monotonic()
        assert _status(sock, TIGHT_BODY_TIMEOUT + 5) == 408
        assert time.monotonic() - start >= TIGHT_BODY_TIMEOUT - 0.5
    finally:
        sock.close()
    assert _hello_ok(tight)  # its admission slot is free again


def test_oversized_bodies_are_still_a_413(tight: Any) -> None:
    declared = _partial_post(tight.url, 70000, 0)  # refused on the header, no body sent
    try:
        assert _status(declared, 5) == 413
    finally:
        declared.close()

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while read
        for _ in range(20):
            yield b"a" * 4096

    r = httpx.post(tight.url + "/hello", content=chunks(), timeout=10)
    assert r.status_code == 413 and "exceeds 65536 bytes" in r.json()["error"]


def test_the_server_bounds_the_connections_it_serves(tight: Any) -> None:
    limit = connection_limit(1, 1)
    u = urllib.parse.urlsplit(tight.url)
    idle = [socket.create_connection((u.hostname, u.port), timeout=5) for _ in range(limit + 2)]
    try:
        time.sleep(1)  # accepted by the server
        r = httpx.get(tight.url + "/hello", timeout=10)
        assert r.status_code == 503, r.text
    finally:
        for sock in idle:
            sock.close()
    assert _hello_ok(tight)


def test_deeply_nested_json_is_a_400_not_a_500(running: Any) -> None:
    # Found in review: json.loads raised RecursionError, answered 500 with a traceback logged.
    r = httpx.post(running.url + "/echo", content=b"[" * 4000, timeout=10,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "malformed JSON body: nested too deeply"


def test_add_principal_refuses_another_clearance_for_an_existing_principal(tight: Any) -> None:
    # Found in review: add_principal(p, label=L) on an existing p ignored L and returned a
    # token carrying the stored (higher) clearance.
    tight.add_principal("pat", label="top")
    with pytest.raises(ConfigError, match="already exists with clearance 'top', not 'public'"):
        tight.add_principal("pat", label="public")
    assert tight.clearance("pat") == "top"
    token = tight.add_principal("pat", label="top")  # the same clearance: a new token
    caller = tight.authenticator.authenticate({"authorization": f"Bearer {token}"},
                                              anonymous_ok=False)
    assert (caller.principal, caller.label) == ("pat", "top")
