"""AcquirePhoto task CompleteAssignment: announce the image and close the assignment."""

from __future__ import annotations

from typing import Any

from functions.retail import (
    ASSIGNMENTS,
    INGRESS,
    PRODUCT_IMAGE,
    REGISTRATIONS,
    STREAM,
    data_errors,
    ingress_errors,
    iso_now,
    now_ms,
)

from trapeze.guest import kv, streams


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    photographer = event["photographer"]
    product_id = event["data"]["id"]
    origin = f"product-photos/Photographer/{photographer['phone']}/{photographer.get('name')}"
    envelope = {
        "schema": INGRESS,
        "origin": origin,
        "timeOrigin": iso_now(),
        "data": {"schema": PRODUCT_IMAGE, "id": product_id, "image": event["image"]},
    }
    problems = ingress_errors(envelope) + data_errors(envelope["data"])
    if problems:
        raise ValueError("invalid image event: " + "; ".join(problems))
    streams.put(STREAM, envelope, partition_key=product_id)

    record = kv.get(REGISTRATIONS, photographer["id"])
    if not isinstance(record, dict) or record.get("assignment") != product_id:
        raise RuntimeError("Unexpected assignment for photographer.")
    # The intended behaviour: count the assignment and clear it (the port the paper used
    # deleted the counter instead, a bug its scenarios never exercised).
    done = {k: v for k, v in record.items() if k != "assignment"}
    done.update(assignments=int(record.get("assignments") or 0) + 1, updated=now_ms(),
                updatedBy=origin)
    if not kv.put(REGISTRATIONS, photographer["id"], done, expect=record):
        raise RuntimeError("the registration changed concurrently; retrying")

    kv.delete(ASSIGNMENTS, photographer["phone"])
    return {**event, "outcome": "photo taken"}
