"""Review of today's fixes (session 7b). The FINDING failed on the code it was written against
and passes since the fix: a channel send is told the invocation's remaining time (`within`),
which bounds HttpEgress's whole exchange and each of SmtpEmail's socket operations, and the
HTTP client's connection cap is back.

FINDING B1 (monitor/monitor.py `_send_by_deadline`, 20c809e). A channel send is run in a
thread of its own and abandoned at the invocation's deadline. The docstring says that the
abandoned thread is "ended by the channel's timeout", but HttpEgress's timeout is httpx's,
which bounds each socket operation, not the exchange (the docstring says so two lines
earlier): a server that sends its response slowly - a byte per read timeout, up to
max_response_bytes (10 MiB by default) - keeps the thread and its connection for as long
as it likes. Before the fix the send ran in the invocation's own body thread, which held the
function's and the runtime's admission until it ended, so the number of such sends was
bounded by `concurrency`. Now the invocation ends at its deadline, gives its admission back,
and its send runs on, counted by nothing: every invocation that times out in a slow
exchange leaves one thread and one TCP connection behind (and since 86f136c the client's
Limits(max_keepalive_connections=0) also sets max_connections=None, so there is no pool cap
either). Threads and sockets are shared by every label: enough of them, and every later
thread start (the next send, the body pool) fails for functions at all labels - the
"counted by no admission" problem invoke_sync's deadline was introduced to end (review: 20
requests with concurrency 2 left 20 bodies running), back through the channel.

Shown here with sequential invocations (concurrency 1) against a dripping server: after each
has ended, and after twice the channel's timeout, their sends are all still running.
Suggested fix: give the exchange a total deadline inside the channel (HttpEgress.send
checks min(channel timeout, invocation's remaining) against a monotonic clock between
chunks and closes the response; smtplib's socket timeout set to the remaining time per
operation), instead of leaving it behind; or hold the invocation's admission until the
abandoned send ends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from trapeze.errors import ChannelError
from trapeze.labels import Lattice
from trapeze.labels.examples import HELLO_RETAIL
from trapeze.monitor import Invocation, MemoryAudit, Monitor
from trapeze.monitor.channels import HttpEgress
from trapeze.policy.specs import ChannelSpec
from trapeze.store import open_store

CHANNEL_TIMEOUT = 0.5


@pytest.fixture
def dripping_server() -> Iterator[str]:
    stop = threading.Event()

    class Drip(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.flush()
            # A byte every fifth of the channel's timeout: no read ever times out.
            for _ in range(1000):
                if stop.wait(CHANNEL_TIMEOUT / 5):
                    return
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Drip)
    server.daemon_threads = True
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api/"
    finally:
        stop.set()
        server.shutdown()
        server.server_close()


def _send_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate()
            if t.name.startswith("trapeze-send-") and t.is_alive()]


def test_b1_abandoned_channel_sends_outlive_the_channel_timeout_and_pile_up(
    tmp_path: Path, dripping_server: str,
) -> None:
    lattice = Lattice.from_hasse(HELLO_RETAIL)
    store = open_store(f"sqlite:///{tmp_path / 'm.db'}", lattice)
    spec = ChannelSpec(name="partner", kind="http", bound="public",
                       url_prefixes=(dripping_server,), timeout=CHANNEL_TIMEOUT)
    channel = HttpEgress(spec)
    monitor = Monitor(lattice, store, MemoryAudit(), channels={"partner": channel})
    before = len(_send_threads())
    try:
        n = 8
        for i in range(n):  # one after the other: concurrency 1
            inv = Invocation(f"r{i}", "fn", "public", "public", time.time() + 0.1)
            with pytest.raises(ChannelError):
                monitor.handle(inv, "http.request", {"url": dripping_server + "slow"})
        # Every invocation has ended. Give the channel's timeout twice over to end the sends.
        time.sleep(2 * CHANNEL_TIMEOUT)
        left = len(_send_threads()) - before
        assert left <= 1, (
            f"{left} channel sends of {n} ended invocations are still running "
            f"{2 * CHANNEL_TIMEOUT} s after the last one (channel timeout {CHANNEL_TIMEOUT} s)"
        )
    finally:
        channel.close()
        store.close()
