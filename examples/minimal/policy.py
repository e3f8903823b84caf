"""Trusted policy for the minimal app: runs in the monitor, never in the sandbox."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def release_greeting(value: Any, info: Mapping[str, Any]) -> Any:
    """The reply of `hello` — `{"greeting": "hello, <name>"}`, nothing else — to an invoker
    below the function's label.

    Only what `hello` could compute from its request at the label it was invoked at: the
    function must not have raised its label (an empty `info["history"]`: it read nothing above
    its invoker) and must have returned normally. A correct `hello` never raises, so its reply
    never needs lowering and this declassifier releases nothing a correct run does not already
    show its caller; what it stops is a compromised `hello` that raises to `admin`, reads
    another user's data and returns it as the greeting.
    """
    if info.get("function") != "hello":
        raise ValueError("only hello's greeting can be declassified")
    if info.get("history") or info.get("status", "ok") != "ok":
        raise ValueError("the greeting was computed after reading above its invoker")
    if isinstance(value, dict) and set(value) == {"greeting"} and isinstance(
        value["greeting"], str
    ) and len(value["greeting"]) <= 200:
        return {"greeting": value["greeting"]}
    raise ValueError("only a greeting can be declassified")
