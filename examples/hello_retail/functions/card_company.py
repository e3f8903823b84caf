"""The card company's side of a purchase: authorize a payment, or store a card.

Called synchronously (functions.invoke) by the PurchaseProduct tasks `authorize` and
`store_card`, at the buyer's label client:X. Why a separate function: the workflow engine waits
for its tasks with an unbounded reply (a raise inside a task raises the whole execution),
whereas the reply to a synchronous invoke is bounded by the caller's label, which is where a
"response" declassifier applies.

- A purchase that brings its own card is decided here, at client:X: nothing above the buyer
  is read, so no declassifier is involved.
- A purchase with the stored card raises to cc-company (where every stored card is readable).
  The `card_replies` declassifier (policy.py) then makes the decision itself, from the store:
  approved iff client X has a stored card (and the 1 % failure does not hit), with an
  authorization code it mints. Whatever this function computes there is what the IFC-off
  baseline answers; under Trapeze it is ignored, so a compromised card company cannot steer
  the approval bit with another client's card.
- Storing raises to client-cc:X and writes the card there; only whether it was stored comes
  back.
"""

from __future__ import annotations

import random
from typing import Any

from functions.retail import CARDS

from trapeze.guest import kv, label

APPROVAL_FAILURE_RATE = 0.01
MAX_AUTHORIZATION = 2**53 - 1


def _client() -> str | None:
    # The buyer is whoever the label says, not a field of the event: a compromised task cannot
    # pay with, or overwrite, another client's card.
    family, _, who = str(label.current()).partition(":")
    return who if family == "client" and who else None


def authorize(event: dict[str, Any]) -> dict[str, Any]:
    who = _client()
    card = event.get("creditCard")
    if card is None and who is not None:
        label.raise_to("cc-company")
        # cc-company sees every client's card facet; only this client's one counts.
        wanted = f"client-cc:{who}"
        card = next((v for v, lab in kv.facets(CARDS, who) if lab == wanted), None)
    if not isinstance(card, str):
        return {"approved": "false",
                "failureReason": "No credit card supplied and no credit card stored in DB"}
    if random.random() < APPROVAL_FAILURE_RATE:
        return {"approved": "false", "failureReason": "Credit card authorization failed"}
    return {"approved": "true", "authorization": random.randrange(MAX_AUTHORIZATION)}


def store(event: dict[str, Any]) -> dict[str, Any]:
    who, card = _client(), event.get("creditCard")
    if who is None or not isinstance(card, str):
        return {"stored": False}
    # client-cc:X: readable by cc-company (and top) only — not the owner, not other clients,
    # not even client:X itself.
    label.raise_to(f"client-cc:{who}")
    kv.put(CARDS, who, card)
    return {"stored": True}


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    operation = event.get("op")
    if operation == "authorize":
        return authorize(event)
    if operation == "store":
        return store(event)
    raise ValueError(f"unknown card operation {operation!r}")
