"""The faceted key-value store, as seen at the invocation's current label."""

from __future__ import annotations

from typing import Any

from trapeze.guest._runtime import call


class _NoExpectation:
    """Sentinel: `put` without a condition (None is a real expectation: "absent")."""

    def __repr__(self) -> str:
        return "NO_EXPECTATION"


NO_EXPECTATION: Any = _NoExpectation()


def get(table: str, key: str) -> Any:
    return call("kv.get", {"table": table, "key": key})


def put(table: str, key: str, value: Any, expect: Any = NO_EXPECTATION) -> bool:
    """Write `value`; with `expect`, only if `get` currently returns it. True if written."""
    args: dict[str, Any] = {"table": table, "key": key, "value": value}
    if expect is not NO_EXPECTATION:
        args["expect"] = expect
    return bool(call("kv.put", args))


def delete(table: str, key: str) -> None:
    call("kv.delete", {"table": table, "key": key})


def facets(table: str, key: str) -> list[tuple[Any, Any]]:
    return [tuple(f) for f in call("kv.facets", {"table": table, "key": key}) or []]


def scan(
    table: str, prefix: str = "", start_after: str | None = None, limit: int = 100
) -> list[tuple[str, Any]]:
    rows = call(
        "kv.scan",
        {"table": table, "prefix": prefix, "start_after": start_after, "limit": limit},
    )
    return [tuple(r) for r in rows or []]
