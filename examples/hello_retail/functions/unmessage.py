"""AcquirePhoto task SendUnassignmentNotice: release the photographer and tell them so."""

from __future__ import annotations

from typing import Any

from functions.retail import REGISTRATIONS, now_ms

from trapeze.guest import channels, kv

SUBJECT = "Cancelled Photography Assignment From The Store"


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    photographer = event["photographer"]
    record = kv.get(REGISTRATIONS, photographer["id"])
    if not isinstance(record, dict) or record.get("assignment") != event["data"]["id"]:
        raise RuntimeError("Unexpected assignment for photographer.")
    released = {k: v for k, v in record.items() if k != "assignment"}
    released["updated"] = now_ms()
    if not kv.put(REGISTRATIONS, photographer["id"], released, expect=record):
        raise RuntimeError("the registration changed concurrently; retrying")
    text = (
        f"Hello {record.get('name', photographer.get('name', ''))}. You are unassigned. "
        f"We will send an assignment soon!"
    )
    channels.send("email", {
        "to": f"{photographer['phone']}@photogs.com",
        "subject": SUBJECT,
        "text": text,
        "html": f"<p>{text}</p>",
    })
    out = {k: v for k, v in event.items() if k != "photographer"}
    out["unassignments"] = int(event.get("unassignments") or 0) + 1
    return out
