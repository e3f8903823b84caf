"""AcquirePhoto task AwaitPhotoSucceed: mark the assignment complete."""

from __future__ import annotations

from typing import Any


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return {**event, "assignmentComplete": "true"}
