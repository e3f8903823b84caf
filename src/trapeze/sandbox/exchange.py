"""One invocation's conversation with a child, on the monitor side.

Runs in the caller's thread: sends the event, answers guest calls through `on_call`, drains
the log pipe (so a chatty child never blocks on a full pipe) and enforces the deadline.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trapeze.errors import GuestVisibleError
from trapeze.sandbox import wire

log = logging.getLogger("trapeze.sandbox")

OnCall = Callable[[str, dict[str, Any]], Any]


class LogBuffer:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0
        self.dropped = 0

    def add(self, data: bytes) -> None:
        room = self.limit - self.size
        if room > 0:
            self.parts.append(data[:room])
            self.size += min(room, len(data))
        self.dropped += max(0, len(data) - max(room, 0))

    def text(self) -> str:
        out = b"".join(self.parts).decode("utf-8", errors="replace")
        if self.dropped:
            out += f"\n[trapeze: log truncated, {self.dropped} bytes dropped]\n"
        return out


def drain_log(fd: int, buf: LogBuffer) -> bool:
    """Read what is in the pipe now, without blocking. False at end of file."""
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return True
        if not data:
            return False
        buf.add(data)


@dataclass
class Exchange:
    status: str  # ok | error | timeout | eof | protocol
    value: Any = None
    error: str | None = None


def _reply(msg_id: int, op: str, args: dict[str, Any], on_call: OnCall, max_body: int) -> bytes:
    try:
        value = on_call(op, args)
        frame = wire.pack({"t": "reply", "id": msg_id, "ok": True, "value": value})
        if len(frame) - wire.HEADER.size > max_body:
            return wire.pack(
                {
                    "t": "reply",
                    "id": msg_id,
                    "ok": False,
                    "kind": "LimitExceeded",
                    "message": f"the reply to {op} exceeds the message limit of {max_body} bytes",
                }
            )
        return frame
    except GuestVisibleError as exc:
        return wire.pack(
            {"t": "reply", "id": msg_id, "ok": False, "kind": exc.kind, "message": str(exc)}
        )
    except Exception:
        # Its text might carry data the guest must not see: log it here, send nothing of it.
        log.exception("internal error while serving %s for a guest", op)
        return wire.pack(
            {"t": "reply", "id": msg_id, "ok": False, "kind": "TrapezeError",
             "message": "internal error"}
        )


def event_frame(event: Any, context: dict[str, Any]) -> bytes:
    wire.check_value(event, "event")
    wire.check_value(context, "context")
    try:
        return wire.pack({"t": "event", "event": event, "context": context})
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"event is not JSON-compatible or bytes: {exc}") from exc


def converse(
    chan: socket.socket,
    log_fd: int,
    pidfd: int | None,
    first: bytes,
    deadline: float,
    on_call: OnCall,
    max_message: int,
    logbuf: LogBuffer,
) -> Exchange:
    chan.setblocking(False)
    os.set_blocking(log_fd, False)
    reader = wire.FrameReader(max_message + wire.ENVELOPE_SLACK)
    out = bytearray(first)
    unread_limit = 2 * max_message + wire.ENVELOPE_SLACK
    poller = select.poll()
    cfd = chan.fileno()
    poller.register(cfd, select.POLLIN | select.POLLOUT)
    poller.register(log_fd, select.POLLIN)
    if pidfd is not None:
        poller.register(pidfd, select.POLLIN)
    log_open = True
    exited = False

    def handle(data: bytes) -> Exchange | None:
        nonlocal out
        try:
            for raw in reader.feed(data):
                if time.monotonic() >= deadline:
                    # Nothing is served past the deadline, however many frames the child
                    # wrote at once: a burst of pipelined calls, read and answered in one go,
                    # kept a body (and its admission, and a covered callee's caller) running
                    # for as long as the child liked (review, session 7:
                    # tests/attacks/test_review_left_behind.py).
                    return Exchange("timeout")
                msg = wire.check_child_message(raw)
                if msg["t"] == "result":
                    if msg["ok"]:
                        return Exchange("ok", value=msg["value"])
                    return Exchange("error", error=msg["error"])
                if len(out) > unread_limit:
                    # The child keeps calling without reading its replies: the monitor would
                    # buffer them without bound (memory shared by every label). Our guest
                    # runtime reads each reply before its next call, so this is an attack.
                    raise wire.ProtocolError(
                        f"more than {unread_limit} bytes of replies left unread"
                    )
                out += _reply(msg["id"], msg["op"], msg["args"], on_call, max_message)
        except wire.ProtocolError as exc:
            return Exchange("protocol", error=f"protocol violation: {exc}")
        return None

    def read_chan() -> tuple[Exchange | None, bool]:
        """Read everything available now. Returns (finished exchange, at end of file)."""
        while True:
            try:
                data = chan.recv(1 << 20)
            except BlockingIOError:
                return None, False
            except ConnectionResetError:
                return None, True
            if not data:
                return None, True
            done = handle(data)
            if done is not None:
                return done, False

    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return Exchange("timeout")
        if out:
            try:
                n = chan.send(out)
                del out[:n]
            except BlockingIOError:
                pass
            except (BrokenPipeError, ConnectionResetError):
                out.clear()
        poller.modify(cfd, select.POLLIN | (select.POLLOUT if out else 0))
        try:
            events = poller.poll(max(1, int(remaining * 1000) + 1))
        except InterruptedError:
            continue
        for fd, ev in events:
            if fd == log_fd:
                log_open = drain_log(log_fd, logbuf)
                if not log_open:
                    poller.unregister(log_fd)
            elif fd == cfd:
                if ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
                    done, eof = read_chan()
                    if done is not None:
                        return done
                    if eof:
                        return Exchange("eof")
            elif fd == pidfd:
                exited = True
        if exited:
            # The child is gone; whatever it sent before dying is already buffered.
            done, _ = read_chan()
            return done if done is not None else Exchange("eof")


__all__ = ["Exchange", "LogBuffer", "converse", "drain_log", "event_frame"]
