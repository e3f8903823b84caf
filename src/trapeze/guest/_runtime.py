"""The guest's end of the channel to the monitor, and the per-invocation loop.

Untrusted: this runs inside the confined child, next to the function's code, which can
replace any of it. It exists for convenience and clear errors; the monitor re-checks all.
"""

from __future__ import annotations

import os
import struct
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any

import msgpack

from trapeze.guest.errors import LimitExceeded, ProtocolError, from_kind

_HEADER = struct.Struct(">I")


class NotJSONCompatible(TypeError):
    pass


def check_value(value: Any, what: str, depth: int = 0) -> Any:
    """Return `value` with tuples as lists, or raise naming the first unsupported type."""
    if depth > 64:
        raise NotJSONCompatible(f"{what} is nested deeper than 64 levels")
    if value is None or isinstance(value, bool | int | float | str | bytes):
        if isinstance(value, int) and not isinstance(value, bool) and not (
            -(2**63) <= value < 2**64
        ):
            raise NotJSONCompatible(f"{what} contains an integer too large for the wire")
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, list | tuple):
        return [check_value(v, what, depth + 1) for v in value]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise NotJSONCompatible(
                    f"{what} has a key of type {type(k).__name__}; only str keys are allowed"
                )
            out[k] = check_value(v, what, depth + 1)
        return out
    raise NotJSONCompatible(
        f"{what} of type {type(value).__name__} is not JSON-compatible or bytes"
    )


def approximate_size(value: Any) -> int:
    """A cheap upper bound of the msgpack size, to refuse a huge result before packing it."""
    if isinstance(value, str | bytes):
        return len(value) * (4 if isinstance(value, str) and not value.isascii() else 1) + 5
    if isinstance(value, list):
        return 5 + sum(approximate_size(v) for v in value)
    if isinstance(value, dict):
        return 5 + sum(len(k) * 4 + 5 + approximate_size(v) for k, v in value.items())
    return 9


class Channel:
    """Blocking framed msgpack over the inherited stream socket (one request at a time)."""

    def __init__(self, fd: int, max_message_bytes: int) -> None:
        self.fd = fd
        self.max = max_message_bytes
        self._lock = threading.Lock()
        self._next_id = 1

    def _read_exact(self, n: int) -> bytes:
        chunks = []
        while n:
            data = os.read(self.fd, min(n, 1 << 20))
            if not data:
                raise ProtocolError("the monitor closed the channel")
            chunks.append(data)
            n -= len(data)
        return b"".join(chunks)

    def recv(self) -> Any:
        (length,) = _HEADER.unpack(self._read_exact(_HEADER.size))
        return msgpack.unpackb(self._read_exact(length), raw=False)

    def send(self, message: dict[str, Any]) -> None:
        body = msgpack.packb(message, use_bin_type=True)
        if len(body) > self.max:
            raise LimitExceeded(
                f"message of {len(body)} bytes exceeds the limit of {self.max} bytes"
            )
        data = memoryview(_HEADER.pack(len(body)) + body)
        while data:
            n = os.write(self.fd, data)
            data = data[n:]

    def call(self, op: str, args: dict[str, Any]) -> Any:
        args = check_value(args, f"arguments of {op}")
        with self._lock:
            call_id = self._next_id
            self._next_id += 1
            self.send({"t": "call", "id": call_id, "op": op, "args": args})
            reply = self.recv()
        if not isinstance(reply, dict) or reply.get("id") != call_id:
            raise ProtocolError("unexpected reply from the monitor")
        if reply.get("ok"):
            return reply.get("value")
        raise from_kind(str(reply.get("kind")), str(reply.get("message")))


_channel: Channel | None = None


def channel() -> Channel:
    if _channel is None:
        raise ProtocolError("not running inside a Trapeze invocation")
    return _channel


def call(op: str, args: dict[str, Any]) -> Any:
    return channel().call(op, args)


def install(fd: int, max_message_bytes: int) -> Channel:
    global _channel
    _channel = Channel(fd, max_message_bytes)
    return _channel


def warm_up(chan: Channel) -> None:
    """Walk the request path once before the event arrives.

    A fresh fork shares every page with the zygote copy-on-write; the first touch of each
    (reference counts change on every object used) costs a page fault, and on a nested VM
    those add up to milliseconds. Paying them while waiting keeps them off the latency path.
    """
    from trapeze.guest.context import Context

    sample = {"t": "event", "event": {"k": [1, "v", b"b", 1.5, None]},
              "context": {"function_name": "f", "request_id": "r", "deadline": 0.0}}
    body = msgpack.packb(sample, use_bin_type=True)
    msgpack.unpackb(body, raw=False)
    Context(sample["context"]).get_remaining_time_in_millis()
    value = check_value(sample["event"], "warm-up")
    approximate_size(value)
    msgpack.packb({"t": "result", "ok": True, "value": value}, use_bin_type=True)
    _HEADER.pack(len(body))
    _flush()


def _format_exception(exc: BaseException) -> str:
    head = f"{type(exc).__name__}: {exc}"
    return head + "\n" + "".join(traceback.format_exception(exc))


def serve_one(
    chan: Channel,
    load: Callable[[], Callable[[Any, Any], Any]],
    import_error: BaseException | None,
) -> None:
    """Wait for the event, run the handler, send the result. Raises nothing."""
    from trapeze.guest.context import Context

    first = chan.recv()
    event, ctx_data = first["event"], first["context"]
    try:
        if import_error is not None:
            raise import_error
        handler = load()
        ctx = Context(ctx_data)
        value = check_value(handler(event, ctx), "the handler's result")
        size = approximate_size(value)
        if size > chan.max:
            raise LimitExceeded(
                f"the result is about {size} bytes, over the limit of {chan.max} bytes"
            )
        message: dict[str, Any] = {"t": "result", "ok": True, "value": value}
    except BaseException as exc:  # the handler's failure is the invocation's outcome
        message = {"t": "result", "ok": False, "error": _format_exception(exc)}
    _flush()
    try:
        chan.send(message)
    except (LimitExceeded, MemoryError) as exc:
        message = {"t": "result", "ok": False, "error": f"LimitExceeded: result: {exc}"}
        chan.send(message)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass
