"""Appending records to streams."""

from __future__ import annotations

from typing import Any

from trapeze.guest._runtime import call


def put(stream: str, record: Any, partition_key: str | None = None,
        label: str | None = None) -> Any:
    """Append `record` to `stream` at the current label or a higher one (`label`); the
    monitor's acknowledgement. As for invoke_async and workflows.start, a label that is not
    at or above the current one is refused."""
    return call(
        "streams.put",
        {"stream": stream, "record": record, "partition_key": partition_key, "label": label},
    )
