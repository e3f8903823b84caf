"""Stream consumer for product photos: registers photographers and starts AcquirePhoto.

Runs at the label of its batch. A photographer's registration is written at that
photographer's label (hidden from other photographers and from clients, visible to the owner);
the AcquirePhoto execution starts at the product's label (the owner's).
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

from functions.retail import (
    ASSIGNMENTS_PER_REGISTRATION,
    EGRESS,
    LOGIN,
    PRODUCT_CREATE,
    REGISTRATION_TTL_S,
    REGISTRATIONS,
    UPDATE_PHONE,
    USERS,
    data_errors,
    friendly_name,
    ingress_errors,
    is_already_exists,
    iso_from_epoch,
    iso_now,
    now_ms,
)

from trapeze.guest import TrapezeError, kv, workflows

# How long AcquirePhoto waits before trying to assign again when every photographer is busy
# (15 s in the original). The workflow reads it from its input ($.assignmentRetrySeconds), so a
# test or a demo can shorten it through the function's environment in the manifest.
RETRY_SECONDS = int(os.environ.get("ASSIGNMENT_RETRY_SECONDS", "15"))


def egress(record: dict[str, Any]) -> dict[str, Any]:
    """The original's egress transform: the ingress envelope plus where and when it came in."""
    envelope = record["data"]
    return {
        **envelope,
        "schema": EGRESS,
        "eventId": f"{record.get('partitionKey')}:{record.get('sequenceNumber')}",
        "timeIngest": iso_from_epoch(record.get("approximateArrivalTimestamp")),
        "timeProcess": iso_now(),
    }


def register_photographer(event: dict[str, Any]) -> None:
    data, origin, now = event["data"], event["origin"], now_ms()
    existing = kv.get(REGISTRATIONS, data["id"])
    record: dict[str, Any] = {
        "updated": now,
        "updatedBy": origin,
        "phone": "1" + data["phone"],
        "lastEvent": event["eventId"],
        "registrations": ASSIGNMENTS_PER_REGISTRATION,
        "timeToLive": math.ceil(time.time()) + REGISTRATION_TTL_S,
    }
    if isinstance(existing, dict):
        # Re-registration keeps the history and the count, and (as in the original) drops the
        # friendly name and any pending assignment.
        record.update(
            created=existing.get("created", now),
            createdBy=existing.get("createdBy", origin),
            assignments=existing.get("assignments", 0),
        )
    else:
        record.update(name=friendly_name(origin), created=now, createdBy=origin, assignments=0)
    kv.put(REGISTRATIONS, data["id"], record)


def start_acquire_photo(event: dict[str, Any]) -> None:
    product_id = event["data"]["id"]
    state = {
        **event,
        "merchantName": friendly_name(event["origin"]),
        "assignmentRetrySeconds": RETRY_SECONDS,
    }
    try:
        # Named by the product id: one photo acquisition per product, however often the record
        # is delivered or the product re-created.
        workflows.start("acquire_photo", product_id, state)
    except TrapezeError as exc:
        if not is_already_exists(exc):
            raise


def register_user(event: dict[str, Any]) -> None:
    # Our replacement for the seeded authenticationTable: a login event, written at the
    # caller's label, is what `authenticate` later looks for at the same label.
    data = event["data"]
    kv.put(USERS, data["id"], {"name": data["name"], "since": now_ms(),
                               "lastEvent": event["eventId"]})


def handler(event: dict[str, Any], context: Any) -> None:
    for record in event.get("Records", []):
        envelope = record.get("data")
        problems = ingress_errors(envelope) or data_errors(envelope["data"])
        if problems:
            print(f"record {record.get('sequenceNumber')} skipped: {'; '.join(problems)}")
            continue
        out = egress(record)
        schema = envelope["data"]["schema"]
        if schema == UPDATE_PHONE:
            register_photographer(out)
        elif schema == PRODUCT_CREATE:
            start_acquire_photo(out)
        elif schema == LOGIN:
            register_user(out)
