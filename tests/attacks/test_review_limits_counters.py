"""Review (limits, counters, identifiers shared across labels): what one invocation leaves
behind that a later, lower one can read back, sequentially, without a clock.

Each finding's test runs two worlds that differ only in what an invocation above the
observer did (its secret), one after the other on a fresh runtime, and compares what a
public observer sees afterwards (review, session 7). A FINDING's test failed on the code it
was written against (that was the evidence) and passes since the fix in
monitor/channels.py (HttpEgress keeps no connection alive and passes no connection headers
to the guest); tests marked SOUND pin down behaviour that was checked and holds.
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

# ---------------------------------------------------------------------------------- the app

MANIFEST = """
[app]
name = "limits-review"

[labels]
bottom = ["public"]
public = ["user:*"]
"user:*" = ["admin"]
admin = ["top"]

# A partner API cleared for admin data: functions at public and at user:X may both use it.
[channels.api]
kind = "http"
bound = "admin"
url_prefixes = ["http://127.0.0.1:{port}/api/"]
timeout = 5
max_response_bytes = 4096

[functions.seed]
handler = "functions/f.py:seed"
timeout = 10

[functions.probe]
handler = "functions/f.py:probe"
timeout = 10

[functions.high]
handler = "functions/f.py:high"
timeout = 10
"""

FUNCTIONS = '''
from trapeze.guest import http, kv


def seed(event, context):
    kv.put("vault", "secret", event["secret"])
    return "ok"


def probe(event, context):
    # At public: one request to the partner API; what came back, headers and body.
    r = http.request("GET", event["base"] + "/api/echo")
    return {"keep_alive": r["headers"].get("keep-alive"), "body": r["body"].decode()}


def high(event, context):
    # At user:alice: acts on the secret only through requests the channel allows
    # (user:alice flows to the channel's bound, admin).
    n = kv.get("vault", "secret")
    for _ in range(n if event.get("mode") == "count" else 0):
        http.request("GET", event["base"] + "/api/echo")
    if event.get("mode") == "drop" and n:
        # A response larger than max_response_bytes: refused mid-body (LimitExceeded), and
        # the pooled connection it came on is closed rather than returned to the pool.
        try:
            http.request("GET", event["base"] + "/api/big")
        except Exception:
            pass
    return "done"
'''


class _Partner(BaseHTTPRequestHandler):
    """An HTTP/1.1 server that keeps connections alive, like most. One handler object per
    TCP connection (socketserver), so ``served`` counts the requests of this connection.

    ``/api/echo`` answers with the client's source port, and, as Apache httpd does by
    default, ``Keep-Alive: timeout=5, max=N`` with N the requests the connection has left.
    The server stores nothing across connections and nothing about what it was sent.
    ``/api/big`` answers 64 KiB."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's naming
        self.served = getattr(self, "served", 0) + 1
        path = urllib.parse.urlsplit(self.path).path
        body = (b"x" * 65536 if path == "/api/big"
                else f"port={self.client_address[1]}".encode())
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Keep-Alive", f"timeout=5, max={100 - self.served}")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def partner() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Partner)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory, partner: ThreadingHTTPServer) -> Path:
    root: Path = tmp_path_factory.mktemp("limits")
    app = root / "app"
    (app / "functions").mkdir(parents=True)
    (app / "trapeze.toml").write_text(
        MANIFEST.replace("{port}", str(partner.server_address[1])))
    (app / "functions" / "f.py").write_text(FUNCTIONS)
    return app


def _ok(result: Any) -> Any:
    assert result.status == "ok", result
    return result.value


def _egress_world(app_dir: Path, tmp: Path, base: str, secret: int, mode: str) -> dict:
    """One world on a fresh runtime (a fresh HTTP client): a public probe, the high
    invocation acting on `secret`, a second public probe. What the second probe saw, and
    whether it came on the same connection as the first."""
    with App.load(app_dir).start(store=f"sqlite:///{tmp / 'app.db'}") as rt:
        _ok(rt.invoke("seed", {"secret": secret}, as_label="user:alice"))
        first = _ok(rt.invoke("probe", {"base": base}, as_label="public"))
        _ok(rt.invoke("high", {"base": base, "mode": mode}, as_label="user:alice"))
        second = _ok(rt.invoke("probe", {"base": base}, as_label="public"))
    return {"keep_alive": second["keep_alive"],
            "same_connection": first["body"] == second["body"]}


# ------------------------------------------------------------------------------- findings

def test_pooled_egress_connection_counts_high_requests_in_a_low_reply(
        app_dir: Path, partner: ThreadingHTTPServer, tmp_path: Path) -> None:
    """FINDING. An HTTP channel's one httpx client pools keep-alive connections across
    labels, so a public invocation's request goes out on the very TCP connection that a
    user:alice invocation used a moment before, and a reply's connection-scoped parts
    count what the high invocation did there. A server that keeps no state about anyone
    (Apache's default ``Keep-Alive: timeout=5, max=N``, N = requests left on the
    connection) tells the public function how many requests the user:alice function made,
    a number it chose from its secret: here 0 or 3.

    Fixed: no keep-alive on channels (max_keepalive_connections=0), and connection-level
    headers (Keep-Alive, Connection) are stripped from what a guest gets."""
    base = f"http://127.0.0.1:{partner.server_address[1]}"
    a = _egress_world(app_dir, tmp_path / "a", base, secret=0, mode="count")
    b = _egress_world(app_dir, tmp_path / "b", base, secret=3, mode="count")
    assert a["keep_alive"] == b["keep_alive"], (
        f"the public probe read the high invocation's request count: "
        f"{a['keep_alive']!r} when it made none, {b['keep_alive']!r} when it made 3")


def test_whether_a_high_request_closed_the_pooled_connection_reaches_a_low_reply(
        app_dir: Path, partner: ThreadingHTTPServer, tmp_path: Path) -> None:
    """FINDING (same cause, no counter in the server at all). The partner only echoes the
    client's source port, which identifies the pooled connection. The user:alice function,
    if its secret says so, asks for a response over the channel's max_response_bytes: the
    monitor stops reading it (LimitExceeded) and the connection is closed instead of going
    back to the pool. The public probe then arrives on a new connection, from another
    port, and compares it with the port its own earlier request came from: one secret bit
    per high invocation, with no clock and no concurrency.

    Fixed as above: every request has a connection of its own."""
    base = f"http://127.0.0.1:{partner.server_address[1]}"
    a = _egress_world(app_dir, tmp_path / "a", base, secret=0, mode="drop")
    b = _egress_world(app_dir, tmp_path / "b", base, secret=1, mode="drop")
    assert a["same_connection"] == b["same_connection"], (
        f"the public probe learnt whether the high invocation closed the pooled "
        f"connection: same connection {a['same_connection']} (secret 0) vs "
        f"{b['same_connection']} (secret 1)")


# ---------------------------------------------------------------------------------- sound

def _store_world(path: Path, high: bool) -> dict[str, Any]:
    """A store where public wrote a few keys, and, in world B only, code above public
    wrote many more: keys sorting between the public ones, facets on the public keys
    themselves, tombstones, and 70 distinct user:N labels (past the 63 label ids for
    which SQLite's readers use bit masks: they switch to byte maps). What public sees."""
    from trapeze.labels import Lattice
    from trapeze.store import open_store

    lattice = Lattice.from_hasse({"bottom": ["public"], "public": ["user:*"],
                                  "user:*": ["admin"], "admin": ["top"]})
    store = open_store(f"sqlite:///{path}", lattice)
    try:
        for i in range(0, 20, 4):
            store.put("t", f"k{i:02d}", {"low": i}, label="public")
        if high:
            for n in range(70):
                who = f"user:{n}"
                store.put("t", f"k{n % 20:02d}", {"high": n}, label=who)
                store.put("t", f"k{n % 20:02d}.x", n, label=who)
                store.delete("t", f"k{(n + 2) % 20:02d}", label=who)
            store.put("t2", "only-high", 1, label="admin")
        store.put("t", "k08", {"low": "again"}, label="public")  # after the high writes
        view = store.view("public")
        pages, after = [], None
        while True:  # page by 2: high keys must not take places in a page
            page = view.scan("t", start_after=after, limit=2)
            if not page:
                break
            pages.append(page)
            after = page[-1][0]
        return {"pages": pages,
                "facets": {f"k{i:02d}": view.facets("t", f"k{i:02d}") for i in range(20)},
                "gets": {f"k{i:02d}": view.get("t", f"k{i:02d}") for i in range(20)},
                "prefix": view.scan("t", prefix="k1", limit=3),
                "tables": view.tables()}
    finally:
        store.close()


def test_sound_low_store_view_and_pages_ignore_high_keys_facets_and_label_count(
        tmp_path: Path) -> None:
    """SOUND. Limits in the store count only what the reader may see: a page of `scan`
    (LIMIT applied after the visibility test, in SQL), the facets of a key, and the
    representation of a reader's visibility map (bit mask up to 63 stored labels, byte map
    beyond, decided by how many labels anyone ever wrote) changes no answer."""
    a = _store_world(tmp_path / "a.db", high=False)
    b = _store_world(tmp_path / "b.db", high=True)
    assert a == b
    assert [k for page in a["pages"] for k, _ in page] == ["k00", "k04", "k08", "k12", "k16"]
    assert all(len(page) <= 2 for page in a["pages"])
