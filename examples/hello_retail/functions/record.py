"""AcquirePhoto callback task AwaitPhoto: remember which execution waits for which phone.

The original split this in two: an activity task that waited, and a `record` task in a
parallel branch that long-polled the shared activity for *some* task token — possibly another
execution's. Here the workflow engine hands this execution's own token to `record` and keeps
the step open until `receive` completes the token, so the correlation cannot go wrong.
"""

from __future__ import annotations

from typing import Any

from functions.retail import ASSIGNMENTS, now_ms

from trapeze.guest import kv


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    token, state = event["taskToken"], event["input"]
    kv.put(ASSIGNMENTS, state["photographer"]["phone"], {
        "updated": now_ms(),
        "updatedBy": state.get("origin"),
        "taskToken": token,
        "taskEvent": state,
        "status": "pending",
    })
    # The step's output is what `receive` sends when it completes the token; this return
    # value only tells the engine that the wait has been set up.
    return {"recorded": True}
