"""Appending records to streams."""

from __future__ import annotations

from typing import Any

from trapeze.guest._runtime import call


def put(stream: str, record: Any, partition_key: str | None = None) -> Any:
    return call(
        "streams.put", {"stream": stream, "record": record, "partition_key": partition_key}
    )
