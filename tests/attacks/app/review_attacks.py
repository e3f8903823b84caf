"""Handlers for tests/attacks/test_review_protocol.py: hostile frames on the channel (fd 3)."""

import array
import os
import socket
import struct
import time

import msgpack


def _frame(body):
    data = msgpack.packb(body, use_bin_type=True)
    return struct.pack(">I", len(data)) + data


def frames(event):
    """Write each of event["bodies"] as one frame, all at once, then linger."""
    os.write(3, b"".join(_frame(b) for b in event["bodies"]))
    time.sleep(5)
    return "not killed"


def never_read(event):
    """Call again and again without ever reading a reply (the monitor must not buffer them)."""
    call = _frame({"t": "call", "id": 1, "op": "kv.get", "args": {"table": "t", "key": "big"}})
    try:
        for _ in range(event["calls"]):
            os.write(3, call)
    except OSError:
        pass  # the monitor hung up
    time.sleep(5)
    return "not killed"


def pass_fds(event):
    """Send descriptors to the monitor with SCM_RIGHTS alongside a valid call frame."""
    chan = socket.socket(fileno=3)
    fds = array.array("i", [0, 1, 2, 3] * 2)
    data = _frame({"t": "call", "id": 1, "op": "label.current", "args": {}})
    chan.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])
    chan.detach()
    from trapeze.guest import label

    return label.current()


def empty_lists(event):
    """One call frame of the largest allowed size whose value is nothing but empty lists: one
    byte each on the wire, about 64 bytes each once decoded by the monitor."""
    n = event["bytes"] - 128
    head = msgpack.packb({"t": "call", "id": 1, "op": "kv.put",
                          "args": {"table": "t", "key": "k"}}, use_bin_type=True)
    # Re-open the args map (3 entries instead of 2) and append its value: array32 of n.
    head = head.replace(b"\x82\xa5table", b"\x83\xa5table", 1)
    body = head + msgpack.packb("value") + b"\xdd" + struct.pack(">I", n) + b"\x90" * n
    os.write(3, struct.pack(">I", len(body)) + body)
    time.sleep(5)
    return "not killed"


def handler(event, context):
    return globals()[event["attack"]](event)
