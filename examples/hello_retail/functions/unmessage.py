"""AcquirePhoto task SendUnassignmentNotice: release the photographer and tell them so.

The email goes out first, while the registration still shows the assignment: the
`assignment_email` declassifier (policy.py) sends an unassignment only to the photographer
actually assigned to this product, with its fixed text.
"""

from __future__ import annotations

import html
from typing import Any

from functions.retail import REGISTRATIONS, now_ms

from trapeze.guest import channels, kv

SUBJECT = "Cancelled Photography Assignment From The Store"


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    photographer = event["photographer"]
    product_id = event["data"]["id"]
    record = kv.get(REGISTRATIONS, photographer["id"])
    if not isinstance(record, dict) or record.get("assignment") != product_id:
        raise RuntimeError("Unexpected assignment for photographer.")
    text = f"Hello {record.get('name', '')}. You are unassigned. We will send an assignment soon!"
    channels.send("email", {
        "to": f"{record.get('phone', photographer['phone'])}@photogs.com",
        "subject": SUBJECT,
        "text": text,
        "html": f"<p>{html.escape(text)}</p>",
        "assignment": {"product": product_id, "registration": photographer["id"]},
    })
    released = {k: v for k, v in record.items() if k != "assignment"}
    released["updated"] = now_ms()
    if not kv.put(REGISTRATIONS, photographer["id"], released, expect=record):
        # A retry sends the email again: better twice than a photographer left assigned.
        raise RuntimeError("the registration changed concurrently; retrying")
    out = {k: v for k, v in event.items() if k != "photographer"}
    out["unassignments"] = int(event.get("unassignments") or 0) + 1
    return out
