"""The framed protocol between the monitor and a child, trusted side.

A frame is a 4-byte big-endian length followed by one msgpack document. Everything a child
sends is attacker input: the length is checked before the body is buffered, the body must
decode without extension types, and each message must have exactly the expected fields.

Child -> monitor:
    {"t": "call", "id": int, "op": str, "args": {str: value}}
    {"t": "result", "ok": True, "value": value}
    {"t": "result", "ok": False, "error": str}
Monitor -> child:
    {"t": "event", "event": value, "context": {...}}           (first frame, once)
    {"t": "reply", "id": int, "ok": True, "value": value}
    {"t": "reply", "id": int, "ok": False, "kind": str, "message": str}
"""

from __future__ import annotations

import struct
import threading
from typing import Any

import msgpack

HEADER = struct.Struct(">I")
# Room for the envelope around a payload of max_message_bytes.
ENVELOPE_SLACK = 4096
MAX_DEPTH = 64
# Decoding costs the monitor memory out of proportion to a frame's size: an empty list is one
# byte on the wire and about 64 bytes decoded, so a 16 MiB frame of nothing but empty lists
# decoded into 1.2 GB and took 20 s of CPU (found in review). A frame may hold at most one list
# or map per CONTAINER_BYTES bytes of its size (plus a floor for small frames): real payloads
# (records, rows, feature vectors) are far below that, the attack far above. Scalars amplify
# less (a 2-byte string is one 3-byte item, ~60 bytes decoded); frames above BIG_FRAME bytes are
# decoded one at a time, so that their transient memory does not add up across invocations.
CONTAINER_BYTES = 16
MIN_CONTAINERS = 4096
BIG_FRAME = 1 << 20
_big_frames = threading.Lock()

OPS = frozenset(
    {
        "kv.get",
        "kv.put",
        "kv.delete",
        "kv.facets",
        "kv.scan",
        "label.current",
        "label.raise",
        "functions.invoke",
        "functions.invoke_async",
        "streams.put",
        "http.request",
        "channel.send",
        "workflows.start",
        "tasks.complete",
    }
)


class ProtocolError(Exception):
    """A child sent something the protocol does not allow; the child is killed."""


def pack(message: dict[str, Any]) -> bytes:
    body = msgpack.packb(message, use_bin_type=True)
    return HEADER.pack(len(body)) + body


def _reject_ext(code: int, data: bytes) -> Any:
    raise ProtocolError(f"msgpack extension type {code} is not allowed")


def unpack_body(body: bytes) -> Any:
    if len(body) > BIG_FRAME:
        with _big_frames:
            return _unpack(body)
    return _unpack(body)


# A frame this small holds at most one container per byte, within the budget: it is decoded
# without the per-container hook (most call frames are; the hook is a Python call each).
_UNCOUNTED = MIN_CONTAINERS * CONTAINER_BYTES // (CONTAINER_BYTES - 1)


def _unpack(body: bytes) -> Any:
    if len(body) <= _UNCOUNTED:
        return _decode(body, None)
    left = len(body) // CONTAINER_BYTES + MIN_CONTAINERS

    def container(value: Any) -> Any:
        # Called by msgpack for each list and map as it is completed; raising stops decoding.
        nonlocal left
        left -= 1
        if left < 0:
            raise ProtocolError(
                f"frame of {len(body)} bytes holds more than "
                f"{len(body) // CONTAINER_BYTES + MIN_CONTAINERS} lists and maps"
            )
        return value

    return _decode(body, container)


def _decode(body: bytes, container: Any) -> Any:
    hooks = {} if container is None else {"list_hook": container, "object_hook": container}
    try:
        return msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            use_list=True,
            ext_hook=_reject_ext,
            timestamp=0,
            **hooks,
        )
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises several types for malformed input
        raise ProtocolError(f"malformed msgpack frame ({type(exc).__name__})") from None


def check_value(value: Any, what: str, depth: int = 0) -> None:
    """A JSON-compatible value or bytes: None, bool, int, float, str, bytes, list, dict."""
    if depth > MAX_DEPTH:
        raise ProtocolError(f"{what} is nested deeper than {MAX_DEPTH}")
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return
    if isinstance(value, list):
        for item in value:
            check_value(item, what, depth + 1)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ProtocolError(f"{what} has a non-string key")
            check_value(v, what, depth + 1)
        return
    raise ProtocolError(f"{what} contains a {type(value).__name__}")


def check_child_message(msg: Any) -> dict[str, Any]:
    """Validate the structure of a frame from a child; return it or raise ProtocolError."""
    if not isinstance(msg, dict):
        raise ProtocolError(f"frame is a {type(msg).__name__}, not a map")
    kind = msg.get("t")
    if kind == "call":
        if set(msg) != {"t", "id", "op", "args"}:
            raise ProtocolError(f"call frame has fields {sorted(map(str, msg))}")
        if not isinstance(msg["id"], int) or isinstance(msg["id"], bool):
            raise ProtocolError("call id is not an integer")
        # isinstance first: `in` on a frozenset hashes its operand, and an unhashable op
        # (a list, a map) raised TypeError past every ProtocolError handler.
        if not isinstance(msg["op"], str) or msg["op"] not in OPS:
            raise ProtocolError(f"unknown operation {str(msg['op'])[:64]!r}")
        if not isinstance(msg["args"], dict):
            raise ProtocolError("call args is not a map")
        check_value(msg["args"], "call args")
        return msg
    if kind == "result":
        ok = msg.get("ok")
        if ok is True and set(msg) == {"t", "ok", "value"}:
            check_value(msg["value"], "result")
            return msg
        if ok is False and set(msg) == {"t", "ok", "error"} and isinstance(msg["error"], str):
            return msg
        raise ProtocolError(f"result frame has fields {sorted(map(str, msg))}")
    raise ProtocolError(f"unknown frame type {str(kind)[:64]!r}")


class FrameReader:
    """Incremental frame decoder that never buffers more than one allowed frame."""

    def __init__(self, max_body: int) -> None:
        self.max_body = max_body
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        self._buf += data
        out: list[Any] = []
        while len(self._buf) >= HEADER.size:
            (length,) = HEADER.unpack_from(self._buf)
            if length > self.max_body:
                raise ProtocolError(
                    f"frame of {length} bytes exceeds the limit of {self.max_body} bytes"
                )
            if len(self._buf) < HEADER.size + length:
                break
            body = bytes(self._buf[HEADER.size : HEADER.size + length])
            del self._buf[: HEADER.size + length]
            out.append(unpack_body(body))
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)
