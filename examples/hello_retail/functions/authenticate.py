"""PurchaseProduct task AuthenticateUser.

The original compared a password from the request with a seeded authenticationTable. Here the
gateway has already authenticated the principal (credentials never reach functions); this step
keeps the workflow's shape and checks that the principal is a registered shopper: that a login
event of theirs put them in the users table, at a label this execution can read (their own).
"""

from __future__ import annotations

from typing import Any

from functions.retail import USERS

from trapeze.guest import kv


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    user = event.get("user")
    if isinstance(user, str) and kv.get(USERS, user) is not None:
        return {**event, "authenticated": "true"}
    return {**event, "authenticated": "false", "failureReason": "Could not authenticate user"}
