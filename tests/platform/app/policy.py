"""Trusted declassifiers of the platform-test app (run in the monitor)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def only_subject(message: Mapping[str, Any], info: Mapping[str, Any]) -> dict[str, Any]:
    # The declared flow: an admin-labelled email may leave on the public channel with its
    # subject only; the body is replaced.
    return {"to": message["to"], "subject": message.get("subject", ""), "text": "(withheld)"}


def greeting_only(value: Any, info: Mapping[str, Any]) -> Any:
    if isinstance(value, dict) and set(value) == {"greeting"}:
        return {"greeting": str(value["greeting"])[:100]}
    raise ValueError("only a greeting may be declassified")
