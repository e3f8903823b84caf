"""Handlers of the engines' end-to-end test (run confined, like any app's)."""

from __future__ import annotations

from typing import Any

from trapeze.guest import kv, label, streams, tasks


def producer(event: Any, context: Any) -> Any:
    return streams.put("events", event["record"], partition_key=event.get("key"))


def consumer(event: Any, context: Any) -> Any:
    here = label.current()
    for r in event["Records"]:
        kv.put("seen", r["sequenceNumber"], {"data": r["data"], "label": here,
                                             "batch": len(event["Records"])})
    return len(event["Records"])


def step_public(event: Any, context: Any) -> Any:
    kv.put("steps", "public", label.current())
    return {"n": event["n"] + 1}


def step_raise(event: Any, context: Any) -> Any:
    label.raise_to("alice")
    kv.put("steps", "raise", label.current())
    return {"n": event["n"] * 10, "secret": "alice's"}


def step_after(event: Any, context: Any) -> Any:
    kv.put("steps", "after", label.current())
    return {"n": event["n"], "label": label.current()}


def completer(event: Any, context: Any) -> Any:
    label.raise_to(event["at"])
    return tasks.complete(event["token"], output={"ok": event["at"]})
