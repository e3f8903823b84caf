"""AcquirePhoto task SendAssignmentNotice: email the assigned photographer.

The workflow runs at the owner's label and the email channel's bound is public; the
`assignment_email` declassifier in policy.py is what lets exactly these messages out.
"""

from __future__ import annotations

import html
from typing import Any

from trapeze.guest import channels

SUBJECT = "New Photography Assignment From The Store"


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    photographer = event["photographer"]
    text = (
        f"Hello {photographer.get('name', '')}! Please snap a pic of: {event['data']['name']} "
        f"Created by: {event.get('merchantName', '')}"
    )
    # Sent synchronously: a failed send raises, and the task's Retry takes over (the original
    # did not wait for the send, so failures were lost).
    channels.send("email", {
        "to": f"{photographer['phone']}@photogs.com",
        "subject": SUBJECT,
        "text": text,
        "html": f"<p>{html.escape(text)}</p>",
    })
    return event
