"""PurchaseProduct task AuthorizeCreditCard: ask the card company for a decision.

Runs at the buyer's label; the card company (`card_company`) raises to cc-company to decide,
and only {approved, authorization | failureReason} comes back, through a declassifier that
also mints the authorization code. The workflow keeps it under $.payment (ResultPath).
"""

from __future__ import annotations

from typing import Any

from trapeze.guest import functions


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    request = {"op": "authorize"}
    if isinstance(event.get("creditCard"), str):
        request["creditCard"] = event["creditCard"]
    return functions.invoke("card_company", request)
