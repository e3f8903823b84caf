"""AcquirePhoto task AwaitPhotoFail: the photo did not come in time; forget the assignment."""

from __future__ import annotations

from typing import Any

from functions.retail import ASSIGNMENTS

from trapeze.guest import kv


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    kv.delete(ASSIGNMENTS, event["photographer"]["phone"])
    return event
