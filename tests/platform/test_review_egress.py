"""Review: HTTP egress keeps no state between labels and stays on the manifest's host.

End to end: a real runtime with confined functions, and a real HTTP server on loopback that
the channel may reach. The server is stateless: whatever it echoes back, the client sent.
"""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from trapeze import App

MANIFEST = """
[app]
name = "egress-review"

[labels]
bottom = ["public"]
public = ["user:*"]
"user:*" = ["admin"]
admin = ["top"]

# A partner API that may receive data up to admin.
[channels.api]
kind = "http"
bound = "admin"
url_prefixes = ["http://127.0.0.1:{port}/api/"]
timeout = 5

[functions.seed]
handler = "functions/f.py:seed"
timeout = 5

[functions.call]
handler = "functions/f.py:call"
timeout = 5

[functions.spy]
handler = "functions/f.py:spy"
timeout = 5
"""

FUNCTIONS = '''
from trapeze.guest import http, kv


def seed(event, context):
    kv.put("vault", "k", event["secret"])
    return "ok"


def call(event, context):
    # Runs at admin and sends admin data to the admin-bounded API: allowed.
    r = http.request("GET", event["base"] + "/api/remember?v=" + kv.get("vault", "k"))
    return r["status"]


def spy(event, context):
    # Runs at public; the function reports what it was refused, with the error's kind.
    try:
        r = http.request(event.get("method", "GET"), event["url"],
                         headers=event.get("headers"), body=event.get("body"))
    except Exception as e:
        return {"refused": f"{type(e).__name__}: {e}"}
    return {"status": r["status"], "body": r["body"].decode()}
'''


class _Stateless(BaseHTTPRequestHandler):
    """Sets a cookie on /api/remember; otherwise echoes the Host and Cookie it received."""

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        self.server.seen.append((self.command, self.headers.get("host"),  # type: ignore[attr-defined]
                                 self.path))
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/api/remember":
            value = urllib.parse.parse_qs(url.query)["v"][0]
            self.send_response(204)
            self.send_header("Set-Cookie", f"sid={value}; Path=/")
            self.end_headers()
            return
        body = f"host={self.headers.get('host')} cookie={self.headers.get('cookie')}".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer  # noqa: N815 - the stdlib's naming

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def partner() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stateless)
    server.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture(scope="module")
def egress(tmp_path_factory: pytest.TempPathFactory,
           partner: ThreadingHTTPServer) -> Iterator[tuple[Any, str]]:
    tmp = tmp_path_factory.mktemp("egress")
    app_dir: Path = tmp / "app"
    (app_dir / "functions").mkdir(parents=True)
    port = partner.server_address[1]
    (app_dir / "trapeze.toml").write_text(MANIFEST.replace("{port}", str(port)))
    (app_dir / "functions" / "f.py").write_text(FUNCTIONS)
    with App.load(app_dir).start(store=f"sqlite:///{tmp / 'app.db'}") as rt:
        yield rt, f"http://127.0.0.1:{port}"


def _spy(rt: Any, **event: Any) -> Any:
    result = rt.invoke("spy", event, as_label="public")
    assert result.ok, result
    return result.value


def test_a_cookie_set_in_reply_to_an_admin_request_never_reaches_a_public_one(
        egress: tuple[Any, str]) -> None:
    # Found in review: the channel's one httpx client kept a cookie jar. The server set a
    # cookie holding the admin secret in reply to an admin-label request, and the monitor sent
    # it with the next public-label request: the TCB itself carried admin data down.
    rt, base = egress
    assert _spy(rt, url=base + "/api/echo")["body"].endswith("cookie=None")
    assert rt.invoke("seed", {"secret": "ADMIN-ONLY-42"}, as_label="admin").ok
    called = rt.invoke("call", {"base": base}, as_label="admin")
    assert called.ok and called.value == 204, called
    after = _spy(rt, url=base + "/api/echo")["body"]
    assert "ADMIN-ONLY-42" not in after and after.endswith("cookie=None")
    # A function still sends a cookie it sets itself, with that request only.
    own = _spy(rt, url=base + "/api/echo", headers={"Cookie": "mine=1"})["body"]
    assert own.endswith("cookie=mine=1")
    assert _spy(rt, url=base + "/api/echo")["body"].endswith("cookie=None")


@pytest.mark.parametrize("header", [
    "Host", "host", "Transfer-Encoding", "Content-Length", "Connection", "Keep-Alive", "TE",
    "Upgrade", "Trailer", "Proxy-Authorization", "proxy-connection",
])
def test_a_function_cannot_set_the_host_or_framing_headers(
        egress: tuple[Any, str], partner: ThreadingHTTPServer, header: str) -> None:
    # Found in review: a guest 'Host' sent the request to another virtual host behind the
    # address the manifest names; framing headers could smuggle a second request.
    rt, base = egress
    value = {"content-length": "1", "transfer-encoding": "chunked"}.get(header.lower(),
                                                                       "attacker.example")
    before = len(partner.seen)  # type: ignore[attr-defined]
    out = _spy(rt, method="POST", url=base + "/api/upload", headers={header: value},
               body="x\r\n0\r\n\r\nGET /elsewhere HTTP/1.1\r\nHost: h\r\n\r\n")
    assert out.get("refused", "").startswith("InvalidArgument: "), out
    assert repr(header) in out["refused"]
    assert len(partner.seen) == before  # type: ignore[attr-defined]
    # Control: the same request without it reaches the manifest's host.
    ok = _spy(rt, method="POST", url=base + "/api/upload", body="x")
    assert ok["status"] == 200 and ok["body"].startswith(f"host=127.0.0.1:{base.rsplit(':')[-1]}")


def test_a_url_httpx_cannot_parse_is_a_clear_error_not_an_internal_one(
        egress: tuple[Any, str]) -> None:
    # Found in review: a tab passes the prefix check, then httpx.InvalidURL reached the guest
    # as "internal error".
    rt, base = egress
    out = _spy(rt, url=base + "/api/a\tb")
    assert out.get("refused", "").startswith("InvalidArgument: invalid URL"), out
    out = _spy(rt, url=base + "/api/echo", headers={"X-Note": "caf\u00e9"})
    assert out.get("refused", "").startswith("InvalidArgument: header 'X-Note'"), out
