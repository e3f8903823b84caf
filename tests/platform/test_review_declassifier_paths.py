"""Review: declassifier paths end to end (response declassifiers on synchronous callees).

Each test runs two worlds that differ only in one bit stored at admin and compares what an
observer at public sees (review, session 7). Tests marked FINDING failed on the code they were
written against (that failure was the evidence) and pass since the fix
(monitor._send_by_deadline: a channel send is given up at the invocation's deadline); tests
marked SOUND pin down behaviour checked and found right.

FINDING F1 (runtime/invoker.py invoke_sync + monitor channel I/O). D1's fix stops a covered
synchronous callee a margin before its caller's deadline, so that the caller always gets the
declassifier's reply in time. But the sandbox enforces that deadline only *between* guest
calls (sandbox/exchange.py converse serves each call synchronously), and some monitor calls
block for as long as the channel allows, not as long as the invocation may run: an HTTP
egress request (HttpEgress.send: min(guest timeout, channel timeout), 10 s by default) or an
SMTP send. A callee that raised to admin under the declassifier and, on one admin bit,
starts a request to an admin-bounded partner API just before its deadline keeps its body
running past the *caller's* deadline; invoke_sync's wait then expires and the caller times
out. The public caller sees "timeout" instead of what the declassifier decided, one bit of
admin data per request (D1 again, through a blocking call instead of a busy loop). Shown
for HTTP egress and for SMTP (a relay slow to greet). Suggested fix: bound every blocking
monitor call by the invocation's remaining time (HttpEgress.send's httpx timeout is per
read, so a total deadline, not only min(timeout, remaining)), and/or let invoke_sync wait
only until the covered callee's deadline and then take the declassifier's "timeout" reply.

SOUND S1. The declassified reply of a synchronous callee reaches a public caller identically
whether the callee (after raising to admin under the declassifier, on an admin bit) returned,
raised, died (os._exit), broke the wire protocol, or escaped beyond max_label; the
declassifier is told each of these statuses, and nothing about it is audited at public.

SOUND S2. Engines (and asynchronous invokes) call with response bound top: no response
declassifier is ever chosen for them (Monitor.response_declassifier needs a raise above the
bound), so they see the real final label and act at it, never a declassified "ok" without a
label; checked here through the monitor directly.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from declassified_callee import write_callee_app
from trapeze import App

CHANNELS = """
# A partner API that may receive data up to admin (as in test_review_egress.py).
[channels.partner]
kind = "http"
bound = "admin"
url_prefixes = ["http://127.0.0.1:{port}/api/"]
timeout = 5

# The staff mail relay, for mail up to admin.
[channels.mail]
kind = "smtp"
bound = "admin"
host = "127.0.0.1"
port = {smtp_port}
sender = "app@example.com"
timeout = 1.5
"""

INNER = """\
import os
import time

from trapeze.guest import channels, http, kv, label


def inner(event, context):
    label.raise_to("admin")  # covered by the declassifier: no withheld reply
    how = event["how"]
    if not kv.get("vault", "bit"):
        return "done"
    # admin data decides from here on
    if how == "fail":
        raise RuntimeError("the bit is set")
    if how == "crash":
        os._exit(3)
    if how == "protocol":
        from trapeze.guest import _runtime
        os.write(_runtime.channel().fd, b"\\xff\\xff\\xff\\x00garbage")
        time.sleep(5)
    if how == "escape":
        label.raise_to("top")
        return "escaped"
    if how == "slow-egress":
        # Just before this callee's deadline (which is its caller's minus the margin), a
        # request to the admin-bounded partner API, which answers in a second.
        time.sleep(max(0.0, context.deadline - time.time() - 0.05))
        http.request("GET", event["base"] + "/api/slow")
        return "sent"
    if how == "slow-mail":
        time.sleep(max(0.0, context.deadline - time.time() - 0.05))
        try:
            channels.send("mail", {"to": "staff@example.com", "subject": "s", "text": "t"})
        except Exception:
            pass
        return "sent"
    return "done"
"""

SOUND_MODES = ("ok", "fail", "crash", "protocol", "escape")


class _SlowPartner(BaseHTTPRequestHandler):
    """An honest partner API that takes a second to answer."""

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's naming
        time.sleep(1.0)
        body = b"ok"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def mail_relay() -> Iterator[int]:
    """A mail relay that accepts connections and is slow to greet (longer than the
    channel's timeout): an honest server under load."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield srv.getsockname()[1]
    stop.set()
    thread.join()
    for c in held:
        c.close()
    srv.close()


@pytest.fixture(scope="module")
def partner() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowPartner)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def _world(root: Path, base: str, smtp_port: int, bit: int) -> dict[str, Any]:
    port = base.rsplit(":", 1)[1]
    app = write_callee_app(
        root / "app", INNER, top=root,
        channels=CHANNELS.replace("{port}", port).replace("{smtp_port}", str(smtp_port)))
    seen: dict[str, Any] = {}
    with App.load(app).start(store=f"sqlite:///{root / 'app.db'}") as rt:
        assert rt.invoke("seed", {"bit": bit}, as_label="admin").status == "ok"
        def audit_at(label: str) -> list[Any]:
            return [(e["kind"], e["function"], e["label"], e["detail"])
                    for e in rt.audit(as_label=label)]

        for how in SOUND_MODES:
            r = rt.invoke("outer", {"how": how, "base": base}, as_label="public")
            seen[how] = (r.status, r.value)
        rt.wait_idle(20)
        seen["audit@public"] = audit_at("public")
        seen["declassified"] = sorted(
            e[3].get("status") for e in audit_at("top") if e[0] == "declassify")
        r = rt.invoke("outer", {"how": "slow-egress", "base": base}, as_label="public")
        seen["slow-egress"] = (r.status, r.value)
        rt.wait_idle(20)
        seen["slow-egress audit@public"] = audit_at("public")[len(seen["audit@public"]):]
        r = rt.invoke("outer", {"how": "slow-mail", "base": base}, as_label="public")
        seen["slow-mail"] = (r.status, r.value)
        rt.wait_idle(20)
    return seen


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory, partner: str,
           mail_relay: int) -> tuple[dict[str, Any], dict[str, Any]]:
    return (_world(tmp_path_factory.mktemp("w0"), partner, mail_relay, 0),
            _world(tmp_path_factory.mktemp("w1"), partner, mail_relay, 1))


def test_s1_a_public_caller_sees_the_declassified_reply_whatever_the_callee_did(
        worlds: tuple[dict[str, Any], dict[str, Any]]) -> None:
    """SOUND S1. outer (public) invokes inner, which raises to admin under a declassifier
    that releases a constant; on an admin bit inner then returns, raises, exits, sends
    garbage on its channel to the monitor, or raises beyond max_label. Public sees
    {"inner": {"ack": true}} in every case and in both worlds; the declassifier was told
    each status; no audit entry about it is visible at public."""
    w0, w1 = worlds
    for how in SOUND_MODES:
        assert w0[how] == ("ok", {"inner": {"ack": True}}), (how, w0[how])
        assert w1[how] == w0[how], f"public sees how the admin callee ended ({how}): {w1[how]}"
    assert w1["audit@public"] == w0["audit@public"]
    assert not any(kind == "declassify" for kind, *_ in w0["audit@public"])
    # World 0: every callee returned; world 1: each misbehaved as told (the escape is told
    # to the declassifier as "withheld", the crash and the protocol violation as "crash").
    assert w0["declassified"] == ["ok"] * len(SOUND_MODES)
    assert w1["declassified"] == ["crash", "crash", "error", "ok", "withheld"]


def test_f1_a_callee_blocked_in_channel_io_past_its_deadline_does_not_end_its_caller(
        worlds: tuple[dict[str, Any], dict[str, Any]]) -> None:
    """FINDING F1. outer (public, 2 s) invokes inner, which raises to admin under a response
    declassifier releasing a constant. On an admin bit, inner waits until just before its
    deadline (its caller's minus the D1 margin) and then makes an HTTP request on a channel
    bounded at admin to a partner that answers in one second. The monitor serves that call
    synchronously with the channel's timeout, not the invocation's deadline, so the callee's
    body outlives its caller's deadline, invoke_sync's wait expires and the caller times out:
    public sees "timeout" in one world and {"inner": {"ack": true}} in the other, instead of
    what the declassifier decided (the declassifier is consulted only after the caller has
    gone)."""
    w0, w1 = worlds
    assert w0["slow-egress"] == ("ok", {"inner": {"ack": True}})
    assert w1["slow-egress"] == w0["slow-egress"], (
        f"public sees whether the admin callee blocked in egress: {w1['slow-egress']}")
    # (It shows in the audit at public as well: a "timeout" entry for outer.)
    assert w1["slow-egress audit@public"] == w0["slow-egress audit@public"]


def test_f1_smtp_a_callee_blocked_in_mail_past_its_deadline_does_not_end_its_caller(
        worlds: tuple[dict[str, Any], dict[str, Any]]) -> None:
    """FINDING F1 (SMTP variant, same cause). As above, but inner sends mail on an
    admin-bounded SMTP channel whose relay is slow to greet: SmtpEmail.send blocks for the
    channel's timeout (1.5 s), past the caller's deadline, and the public caller times out
    in the world where the admin bit is set."""
    w0, w1 = worlds
    assert w0["slow-mail"] == ("ok", {"inner": {"ack": True}})
    assert w1["slow-mail"] == w0["slow-mail"], (
        f"public sees whether the admin callee blocked in mail: {w1['slow-mail']}")


def test_s2_engines_and_async_invokes_never_get_a_declassified_reply(tmp_path: Path) -> None:
    """SOUND S2. An invocation answering to top (how the stream and workflow engines and
    asynchronous invokes call) that raises to admin is not covered by the response
    declassifier (no raise above its bound), so its reply carries the real final label;
    the same raise answering to public chooses the declassifier and does not fire the
    withheld reply."""
    from trapeze.labels import Lattice
    from trapeze.monitor import Declassifier, Invocation, MemoryAudit, Monitor
    from trapeze.store import open_store

    lattice = Lattice.from_hasse({"bottom": ["public"], "public": ["admin"], "admin": ["top"]})
    d = Declassifier("ack", "response", "admin", "bottom", lambda v, i: {"ack": True})
    store = open_store(f"sqlite:///{tmp_path / 's.db'}", lattice)
    try:
        monitor = Monitor(lattice, store, MemoryAudit(), declassifiers={"ack": d})
        fired: list[str] = []
        engine = Invocation("e", "f", "public", "top", time.time() + 60)
        engine.on_withheld = lambda inv: fired.append(inv.request_id)
        monitor.raise_label(engine, "admin")
        assert engine.reply_declassifier is None and not engine.withheld
        caller = Invocation("c", "f", "public", "public", time.time() + 60)
        caller.on_withheld = lambda inv: fired.append(inv.request_id)
        monitor.raise_label(caller, "admin")
        assert caller.reply_declassifier is d and not caller.withheld
        monitor.raise_label(caller, "top")  # beyond max_label: recorded, nothing sent early
        assert (caller.escaped_at, caller.escaped_history, fired) == ("admin", ("public",), [])
        assert monitor.response_declassifiable("public")
        assert not monitor.response_declassifiable("top")
    finally:
        store.close()
