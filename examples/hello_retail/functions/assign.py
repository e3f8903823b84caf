"""AcquirePhoto task AssignPhotographer: pick the least-used free photographer.

Runs at the workflow's label (the owner's), where every photographer's registration is
visible. The claim is a conditional write, so two executions racing for the same photographer
cannot both get them (the original relied on a DynamoDB condition for the same reason).
"""

from __future__ import annotations

from typing import Any

from functions.retail import REGISTRATIONS, now_ms, scan_all

from trapeze.guest import kv

MAX_ASSIGNMENTS_SCANNED = 30  # the original looked at assignment counts 0..29 only


def _available(record: Any) -> bool:
    if not isinstance(record, dict) or "assignment" in record:
        return False
    done, allowed = record.get("assignments"), record.get("registrations")
    if not (isinstance(done, int) and isinstance(allowed, int)):
        return False
    return 0 <= done < min(allowed, MAX_ASSIGNMENTS_SCANNED)


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    state = dict(event)
    photographers = state.get("photographers")
    photographers = list(photographers) if isinstance(photographers, list) else []
    # Fewest assignments first; among equals, store (key) order, as the original's scans did.
    candidates = sorted(
        ((key, rec) for key, rec in scan_all(REGISTRATIONS) if _available(rec)),
        key=lambda row: row[1]["assignments"],
    )
    for key, record in candidates:
        claimed = {
            **record,
            "updated": now_ms(),
            "updatedBy": state.get("origin"),
            "assignment": state["data"]["id"],
        }
        if kv.put(REGISTRATIONS, key, claimed, expect=record):
            return {
                **state,
                "photographer": {**claimed, "id": key},
                "photographers": [*photographers, key],
                "assigned": "true",
                "assignmentComplete": "false",
            }
        # Someone else changed this registration since the scan: try the next one.
    return {**state, "photographers": photographers, "assigned": "false"}
