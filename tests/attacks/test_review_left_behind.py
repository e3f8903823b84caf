"""Review (session 7, state left behind on the trusted side): what a higher-label invocation
that has *ended* — by the platform's own account: its withheld reply came back and its
function's timeout has passed — leaves in the monitor, the runtime or the sandbox that
changes a later, lower invocation's outcome, sequentially.

Each test runs two worlds on a fresh runtime that differ only in a bit above the observer,
then one public invocation, and compares its outcome. A FINDING's test failed on the code it
was written against and passes since the fix (sandbox/exchange.py serves no frame past the
deadline); tests marked SOUND pin down behaviour that was checked and holds.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from app_files import write_app
from declassified_callee import write_callee_app
from trapeze import App

HIGH_TIMEOUT_S = 1.0

MANIFEST = f"""
[app]
name = "left-behind-review"

[labels]
bottom = ["public"]
public = ["secret"]
secret = ["top"]

# One invocation at a time and no queue: a second request while one runs is refused at once
# (an operator's choice for a small deployment; allowed by the manifest).
[limits]
concurrency = 1
queue = 0

[functions.seed]
handler = "functions/f.py:seed"
timeout = 10

[functions.high]
handler = "functions/f.py:high"
timeout = {HIGH_TIMEOUT_S}

[functions.low]
handler = "functions/f.py:low"
timeout = 10
"""

FUNCTIONS = '''
import os
import struct
import time

import msgpack

from trapeze.guest import kv, label


def seed(event, context):
    kv.put("vault", "bit", event["bit"])
    return "ok"


def high(event, context):
    # Called by a public principal: the raise withholds the reply at once.
    label.raise_to("secret")
    if kv.get("vault", "bit"):
        # Pipeline many guest calls without reading a reply. The monitor answers every frame
        # it has received before it looks at the deadline again (sandbox/exchange.py: the
        # deadline is checked in the outer loop only, and read_chan keeps reading while data
        # is there), so the body keeps running - and keeps its admission - long after the
        # function's timeout.
        frames = bytearray()
        for i in range(event["n"]):
            body = msgpack.packb({"t": "call", "id": 1000 + i, "op": "kv.get",
                                  "args": {"table": "vault", "key": "k%d" % i}})
            frames += struct.pack(">I", len(body)) + body
        view = memoryview(bytes(frames))
        while view:
            view = view[os.write(3, view):]
    time.sleep(60)  # either way: runs to its deadline, where the monitor kills it


def low(event, context):
    return "hello"
'''


@pytest.fixture()
def app_dir(tmp_path: Path) -> Path:
    app = write_app(tmp_path / "app", MANIFEST, {"f.py": FUNCTIONS}, top=tmp_path)
    (app / "trapeze.toml").chmod(0o644)
    (app / "functions" / "f.py").chmod(0o644)
    return app


def _deadline_world(app_dir: Path, db: Path, bit: int) -> dict[str, Any]:
    """Seed the secret bit, run the high invocation (withheld reply), wait until its
    function's timeout has passed by a margin, then one public invocation."""
    with App.load(app_dir).start(store=f"sqlite:///{db}") as rt:
        assert rt.invoke("seed", {"bit": bit}, as_label="secret").status == "ok"
        t0 = time.monotonic()
        high = rt.invoke("high", {"n": 120_000}, as_label="public")
        assert high.status == "withheld", high
        # The high invocation has ended by the platform's account: its reply came, and its
        # timeout (the bound on how long a body runs) is over.
        time.sleep(max(0.0, t0 + HIGH_TIMEOUT_S + 0.5 - time.monotonic()))
        low = rt.invoke("low", {}, as_label="public")
        return {"status": low.status, "value": low.value, "error": low.error}


# ------------------------------------------------------------------------------- findings

def test_pipelined_calls_keep_a_high_body_running_past_its_deadline(
        app_dir: Path, tmp_path: Path) -> None:
    """FINDING. `converse()` checks the deadline only between reads of the channel, and
    `read_chan()` serves every frame that has arrived, reading again while more is there.
    A function that writes a burst of call frames without reading the replies (any bytes
    on its channel are its to send) is served call after call with no deadline check, so
    its body runs on for as long as the burst lasts - here seconds past a 1 s timeout -
    bounded only by `unread_limit` (2 x max_message_bytes of replies, ~32 MiB: hundreds
    of thousands of calls). A secret-label body decides on its secret whether to do so:
    afterwards, with no clock and no concurrency of its own making, a public invocation
    issued after the high one's timeout is admitted in one world and refused ("busy") in
    the other, because the high body still holds the runtime's admission. The same burst
    is how a covered synchronous callee outlives its caller's deadline after all (the
    margin of runtime/invoker.py), and how an invocation leaves more than the one
    abandoned channel-send thread `_send_by_deadline` allows for: each `http.request`
    served after the deadline starts a thread of its own.

    Fix: check the deadline per frame in `handle()`/`read_chan()` (return a timeout as
    soon as it passes), so nothing is served for an invocation after its deadline."""
    a = _deadline_world(app_dir, tmp_path / "a.db", bit=0)
    b = _deadline_world(app_dir, tmp_path / "b.db", bit=1)
    assert a["status"] == "ok", a
    assert a == b, (
        f"a public invocation after the high one's timeout saw the secret bit: {a} when it "
        f"was 0, {b} when it was 1")


DECL_INNER = '''
import os
import struct
import time

import msgpack

from trapeze.guest import kv, label


def inner(event, context):
    label.raise_to("admin")  # covered by the declassifier: no withheld reply
    if not kv.get("vault", "bit"):
        time.sleep(60)  # runs into its deadline: the declassifier is told "timeout"
    frames = bytearray()
    for i in range(event["n"]):
        body = msgpack.packb({"t": "call", "id": 1000 + i, "op": "kv.get",
                              "args": {"table": "vault", "key": "k%d" % i}})
        frames += struct.pack(">I", len(body)) + body
    view = memoryview(bytes(frames))
    while view:
        view = view[os.write(3, view):]
    time.sleep(60)  # the same: into the deadline, as far as the callee can tell
'''


def _declassified_world(tmp_path: Path, bit: int) -> dict[str, Any]:
    app = write_callee_app(tmp_path / f"d{bit}", DECL_INNER, top=tmp_path)
    with App.load(app).start(store=f"sqlite:///{tmp_path / f'd{bit}.db'}") as rt:
        assert rt.invoke("seed", {"bit": bit}, as_label="admin").status == "ok"
        r = rt.invoke("outer", {"n": 120_000}, as_label="public")
        return {"status": r.status, "value": r.value}


def test_pipelined_calls_let_a_covered_callee_outlive_its_callers_deadline(
        tmp_path: Path) -> None:
    """FINDING (same cause, a direct leak). A callee that a response declassifier covers
    is stopped a margin before its public caller's deadline so that the caller gets the
    declassifier's decision even when the callee, after raising to admin, runs into its
    deadline (review, session 7). The callee here does that in both worlds - but on an
    admin bit it first writes a burst of call frames, which the monitor serves past the
    callee's deadline and past the caller's: the caller's `functions.invoke` gives up at
    the caller's deadline, and the public caller times out instead of returning
    {"inner": {"ack": true}}. One admin bit in a public reply, no concurrency, no clock.

    Fix: as above (the deadline checked before each frame is served)."""
    a = _declassified_world(tmp_path, bit=0)
    b = _declassified_world(tmp_path, bit=1)
    assert a == {"status": "ok", "value": {"inner": {"ack": True}}}, a
    assert a == b, f"the public caller's outcome tells the admin bit: {a} vs {b}"


# ---------------------------------------------------------------------------------- sound

SOUND_MANIFEST = """
[app]
name = "left-behind-sound"

[labels]
bottom = ["public"]
public = ["secret"]
secret = ["top"]

[functions.nasty]
handler = "functions/g.py:nasty"
timeout = 10
prefork = 2
"""

SOUND_FUNCTIONS = '''
import array
import os
import signal
import socket


def nasty(event, context):
    mode = event["mode"]
    if mode == "probe":
        # What a later public invocation of the same function sees of its sandbox.
        with open("/tmp/mine", "wb") as fh:
            fh.write(b"y" * (1 << 20))
        return {"tmp": sorted(os.listdir("/tmp")), "size": os.path.getsize("/tmp/mine"),
                "uid": os.getuid(), "pid": os.getpid()}
    if mode == "quiet":
        return "quiet"
    # Everything a confined child can do to its surroundings on the way out: fill its tmp,
    # pass descriptors of it (and of its channel) to the monitor, leave half a frame on the
    # channel, and die of a signal.
    try:
        with open("/tmp/fill", "wb") as fh:
            while True:
                fh.write(b"x" * (1 << 20))
    except OSError:
        pass
    fd = os.open("/tmp/fill", os.O_RDONLY)
    chan = socket.socket(fileno=os.dup(3))
    try:
        chan.sendmsg([b"\\x00"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                   array.array("i", [fd, 3, 1, 2]))])
    except OSError:
        pass
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            os.kill(1, sig)   # the child is pid 1 of its namespace
            os.kill(-1, sig)
        except OSError:
            pass
    os.kill(os.getpid(), signal.SIGSEGV)

'''


@pytest.fixture()
def sound_app(tmp_path: Path) -> Path:
    app = write_app(tmp_path / "sapp", SOUND_MANIFEST, {"g.py": SOUND_FUNCTIONS}, top=tmp_path)
    (app / "trapeze.toml").chmod(0o644)
    (app / "functions" / "g.py").chmod(0o644)
    return app


def _zygote_world(app_dir: Path, db: Path, nasty: bool) -> list[dict[str, Any]]:
    with App.load(app_dir).start(store=f"sqlite:///{db}") as rt:
        for _ in range(3):
            high = rt.invoke("nasty", {"mode": "crash" if nasty else "quiet"},
                             as_label="secret")
            assert high.status == ("error" if nasty else "ok"), high
        seen = []
        for _ in range(4):  # more than the pool: replacements and extras alike
            r = rt.invoke("nasty", {"mode": "probe"}, as_label="public")
            assert r.status == "ok", r
            seen.append({k: r.value[k] for k in ("tmp", "size", "uid", "pid")})
        return seen


def test_sound_a_crashing_child_leaves_its_zygote_and_slots_as_they_were(
        sound_app: Path, tmp_path: Path) -> None:
    """SOUND. A secret invocation that fills its tmpfs, hands descriptors of it and of its
    channel to the monitor inside a torn frame (SCM_RIGHTS on the stream: the monitor's
    recv() takes no ancillary data, so the kernel drops them), signals whatever it can
    name and dies of SIGSEGV, three times over, changes nothing a later public invocation
    of the same function gets: it is served (the zygote lives, the pool and extras
    refill), its /tmp is empty and has room (every slot's tmpfs is replaced), and it sees
    uid 65534 and pid 1 as always."""
    a = _zygote_world(sound_app, tmp_path / "a.db", nasty=False)
    b = _zygote_world(sound_app, tmp_path / "b.db", nasty=True)
    assert a == b
    assert all(s["tmp"] == ["mine"] or "mine" in s["tmp"] for s in a)
    assert all(s["size"] == 1 << 20 for s in a)


EGRESS_MANIFEST = """
[app]
name = "left-behind-egress"

[labels]
bottom = ["public"]
public = ["secret"]
secret = ["top"]

# One partner API cleared for secret data, used at both labels.
[channels.api]
kind = "http"
bound = "secret"
url_prefixes = ["http://127.0.0.1:{port}/api/"]
timeout = 4

[functions.high]
handler = "functions/h.py:high"
timeout = 1

[functions.low]
handler = "functions/h.py:low"
timeout = 5
"""

EGRESS_FUNCTIONS = '''
from trapeze.guest import http, kv, label


def high(event, context):
    label.raise_to("secret")
    if event["slow"]:
        # Runs into the deadline: the monitor gives the send up and leaves its thread behind.
        http.request("GET", event["base"] + "/api/slow")
    return "done"


def low(event, context):
    r = http.request("GET", event["base"] + "/api/fast")
    return {"status": r["status"], "body": r["body"].decode(), "headers": sorted(r["headers"])}
'''


@pytest.fixture()
def partner() -> Any:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802
            if self.path.endswith("/slow"):
                time.sleep(3)
            body = b"fast"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.handle_error = lambda *args: None  # type: ignore[method-assign] # abandoned clients
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _egress_world(tmp_path: Path, port: int, slow: bool) -> dict[str, Any]:
    app = write_app(tmp_path / ("slow" if slow else "quick"),
                    EGRESS_MANIFEST.replace("{port}", str(port)), {"h.py": EGRESS_FUNCTIONS},
                    top=tmp_path)
    (app / "trapeze.toml").chmod(0o644)
    (app / "functions" / "h.py").chmod(0o644)
    base = f"http://127.0.0.1:{port}"
    with App.load(app).start(store=f"sqlite:///{tmp_path / (app.name + '.db')}") as rt:
        for _ in range(4):
            r = rt.invoke("high", {"slow": slow, "base": base}, as_label="secret")
            assert r.status == ("timeout" if slow else "ok"), r
        low = rt.invoke("low", {"base": base}, as_label="public")
        return {"status": low.status, "value": low.value, "error": low.error}


def test_sound_abandoned_channel_sends_hold_nothing_a_later_request_needs(
        partner: Any, tmp_path: Path) -> None:
    """SOUND. Four secret invocations each run an HTTP request into their deadline; the
    monitor gives each send up (`_send_by_deadline`) and its thread runs on to the
    channel's timeout. The channel's client pools no connection and caps none
    (max_keepalive_connections=0, no max_connections), so a public request on the same
    channel right after is served exactly as when no send was left behind."""
    port = partner.server_address[1]
    a = _egress_world(tmp_path, port, slow=False)
    b = _egress_world(tmp_path, port, slow=True)
    assert a["status"] == "ok" and a["value"]["body"] == "fast", a
    assert a == b
