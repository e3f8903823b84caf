"""AcquirePhoto task SendAssignmentNotice: email the assigned photographer.

The workflow runs at the owner's label and the email channel's bound is public. The
`assignment_email` declassifier in policy.py lets the email out, but builds it itself: from the
two ids named under "assignment" it reads the photographer's registration (who must be the one
assigned to this product) and the product's name, and renders the fixed template below. The
text sent here is what the IFC-off baseline sends; under Trapeze the declassifier's copy of it
goes out — so the product's name is the catalog's here too.
"""

from __future__ import annotations

import html
import time
from typing import Any

from functions.retail import CATALOG

from trapeze.guest import channels, kv

SUBJECT = "New Photography Assignment From The Store"
CATALOG_WAIT_S = 5.0


def catalog_name(product_id: str) -> str:
    """The product's name in the catalog. `catalog_builder` consumes the same stream record
    that started this workflow and may not have written the entry yet: wait for it briefly
    (a failed task would be retried a whole second later)."""
    deadline = time.monotonic() + CATALOG_WAIT_S
    while True:
        item = kv.get(CATALOG, product_id)
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            return str(item["name"])
        if time.monotonic() > deadline:
            raise RuntimeError(f"product {product_id!r} is not in the catalog yet")
        time.sleep(0.02)


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    photographer = event["photographer"]
    product_id = event["data"]["id"]
    text = (
        f"Hello {photographer.get('name', '')}! Please snap a pic of: "
        f"{catalog_name(product_id)} Created by: {event.get('merchantName', '')}"
    )
    # Sent synchronously: a failed send raises, and the task's Retry takes over (the original
    # did not wait for the send, so failures were lost).
    channels.send("email", {
        "to": f"{photographer['phone']}@photogs.com",
        "subject": SUBJECT,
        "text": text,
        "html": f"<p>{html.escape(text)}</p>",
        "assignment": {"product": product_id, "registration": photographer["id"]},
    })
    return event
