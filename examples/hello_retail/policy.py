"""Hello Retail's trusted declassifiers: the only places where a label goes down.

Loaded by the monitor, never inside a sandbox. Each callable gets the value about to leave and
`info` (function, principal, request_id, label, history, channel) and returns what may be
released, or raises to refuse. They do not trust the function that produced the value: each
checks which function is speaking and lets through only the fields and shapes that function is
meant to release — a compromised handler can at most choose among the values a correct one
could send.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from typing import Any

MAX_AUTHORIZATION = 2**53 - 1

ASSIGNMENT_SUBJECTS = frozenset({
    "New Photography Assignment From The Store",
    "Cancelled Photography Assignment From The Store",
})
_PHOTOGRAPHER_ADDRESS = re.compile(r"1\d{10}@photogs\.com\Z")
_THANKS = re.compile(r"Thanks so much [A-Za-z0-9 ._'-]{0,64}!\Z")
RECEIVE_REPLIES = frozenset({
    "ServerError",
    "ClientError: expected POST /photos",
    "ClientError: the body must be JSON",
    "ClientError: the body must be a JSON object",
    "ClientError: MediaUrl0, MediaContentType0 and From are required",
})
AUTHORIZATION_FAILURES = frozenset({
    "Credit card authorization failed",
    "No credit card supplied and no credit card stored in DB",
})
PRODUCT_FIELDS = frozenset({"brand", "name", "description", "category", "image", "updated",
                            "updatedBy"})

# Who may release a product to everybody: `info["principal"]` (the principal on whose behalf
# the invocation runs) must be one of these; see README ("Product release").
RELEASERS = frozenset({"owen"})


class Refused(ValueError):
    """The value is not something this declassifier releases."""


def _need(condition: bool, why: str) -> None:
    if not condition:
        raise Refused(why)


def release_assignment_email(value: Mapping[str, Any], info: Mapping[str, Any]) -> dict[str, Any]:
    """message / unmessage: the owner-labelled assignment email, to the photographer only."""
    _need(info.get("function") in ("message", "unmessage"), "not an assignment email")
    to, subject = value.get("to"), value.get("subject")
    _need(isinstance(to, str) and bool(_PHOTOGRAPHER_ADDRESS.match(to)), "recipient")
    _need(subject in ASSIGNMENT_SUBJECTS, "subject")
    text, html = value.get("text"), value.get("html")
    _need(isinstance(text, str) and len(text) <= 2000, "text")
    _need(html is None or (isinstance(html, str) and len(html) <= 4000), "html")
    return {"to": to, "subject": subject, "text": text, "html": html}


def release_image_request(value: Mapping[str, Any], info: Mapping[str, Any]) -> dict[str, Any]:
    """receive: a plain GET of the image URL the photographer sent (no body, no headers)."""
    _need(info.get("function") == "receive", "only receive downloads images")
    _need(str(value.get("method", "")).upper() == "GET", "only GET")
    _need(not value.get("body"), "no request body")
    url = value.get("url")
    _need(isinstance(url, str) and len(url) <= 2048, "url")
    return {"method": "GET", "url": url, "headers": {}, "body": None,
            "timeout": value.get("timeout")}


def release_reply(value: Any, info: Mapping[str, Any]) -> Any:
    """Replies to an invoker below the function's final label, by function.

    Called for every outcome of such an invocation (`info["status"]`). One that did not
    return ("error", "timeout", "crash", or "withheld": its label rose beyond this
    declassifier's max_label) is refused, so its caller gets the runtime's fixed refusal and
    learns that much: one bit, released deliberately (a correct function here fails only on
    a platform fault, and the IFC-off deployment reports failures alike). A policy that must
    not release it answers every status with the same reply."""
    function = info.get("function")
    _need(info.get("status", "ok") == "ok", "the function did not return a reply")
    _need(isinstance(value, Mapping), "replies are objects")
    if function == "receive":
        return _receive_reply(value)
    if function == "card_company":
        if "approved" in value:
            return _authorization(value)
        # Whether a card was stored is known to the client anyway (they asked for it).
        return {"stored": value.get("stored") is True}
    if function == "read_product":
        return _release(value, info)
    raise Refused(f"no reply of {function!r} is declassified")


def _receive_reply(value: Mapping[str, Any]) -> dict[str, Any]:
    # The photographer learns that their photo was taken (and the name on the assignment, as
    # in the original), or one of a few fixed error texts.
    body, status = value.get("body"), value.get("statusCode")
    _need(status in (200, 400), "status")
    _need(isinstance(body, str) and (body in RECEIVE_REPLIES or bool(_THANKS.match(body))),
          "reply text")
    return {"statusCode": status,
            "headers": {"Access-Control-Allow-Origin": "*",
                        "Content-Type": "text/plain; charset=utf-8"},
            "body": body}


def _authorization(value: Mapping[str, Any]) -> dict[str, Any]:
    # One bit leaves the card company: approved or not, with a reason from a fixed list. The
    # authorization code is minted here, so a compromised `authorize` cannot smuggle a card
    # number out in it.
    if value.get("approved") == "true":
        return {"approved": "true", "authorization": secrets.randbelow(MAX_AUTHORIZATION)}
    reason = value.get("failureReason")
    if reason not in AUTHORIZATION_FAILURES:
        reason = "Credit card authorization failed"
    return {"approved": "false", "failureReason": reason}


def _release(value: Mapping[str, Any], info: Mapping[str, Any]) -> dict[str, Any]:
    # The owner publishes a product: its catalog entry and price, nothing else. Only a read
    # that started below owner reaches here (the guard), i.e. a release requested at bottom,
    # and only on behalf of a releaser. Invocations on behalf of nobody (stream deliveries,
    # workflow tasks, label-only API calls) carry no principal and are refused.
    principal = info.get("principal")
    _need(isinstance(principal, str) and principal in RELEASERS,
          "only the owner releases products")
    product_id, item, price = value.get("id"), value.get("item"), value.get("price")
    _need(isinstance(product_id, str) and len(product_id) <= 200, "id")
    if item is None:  # no such product: a releaser may learn that
        _need(price is None, "a price without an item")
        return {"id": product_id, "item": None, "price": None}
    _need(isinstance(item, Mapping) and set(item) <= PRODUCT_FIELDS, "item")
    _need(all(isinstance(v, str | int) and not isinstance(v, bool) and len(str(v)) <= 4000
              for v in item.values()), "item values")
    _need(price is None or (isinstance(price, str) and price.isdigit()), "price")
    return {"id": product_id, "item": dict(item), "price": price}
