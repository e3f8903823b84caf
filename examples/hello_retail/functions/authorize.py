"""PurchaseProduct task AuthorizeCreditCard, run by the card company.

It raises to cc-company, which can read every stored card; only the decision leaves, through
the `purchase_result` declassifier (policy.py), which releases approved/failureReason and mints
the authorization code itself. The workflow keeps this result under $.payment (ResultPath), so
the rest of the state never passes through cc-company.
"""

from __future__ import annotations

import random
from typing import Any

from functions.retail import CARDS

from trapeze.guest import kv, label

APPROVAL_FAILURE_RATE = 0.01
MAX_AUTHORIZATION = 2**53 - 1


def _stored_card(user: str, client_label: str) -> Any:
    # Only the card stored by this client counts: the facet at client-cc:<them>. cc-company
    # sees every client's facets, and must not pay with someone else's card.
    family, _, who = client_label.partition(":")
    if family != "client":
        return None
    wanted = f"client-cc:{who}"
    return next((value for value, lab in kv.facets(CARDS, user) if lab == wanted), None)


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    client_label = str(label.current())
    label.raise_to("cc-company")
    card = event.get("creditCard")
    if card is None:
        card = _stored_card(str(event.get("user")), client_label)
    if card is None:
        return {"approved": "false",
                "failureReason": "No credit card supplied and no credit card stored in DB"}
    if random.random() < APPROVAL_FAILURE_RATE:
        return {"approved": "false", "failureReason": "Credit card authorization failed"}
    return {"approved": "true", "authorization": random.randrange(MAX_AUTHORIZATION)}
