"""Hello Retail's trusted declassifiers: the only places where a label goes down.

Loaded by the monitor, never inside a sandbox. Each callable gets the value about to leave and
`info` (function, principal, request_id, label, history, channel, status, and `read(table,
key)`: a trusted read of the store at the declassifier's max_label) and returns what may be
released, or raises to refuse.

They do not trust the function that produced the value. A compromised function may have read
anything up to its label before it speaks, so nothing it *chose* after that may go out: each
declassifier releases either what it reads from the store itself (`info["read"]`) and renders
into a fixed shape, or what the function computed before it read anything above the output's
bound (an empty `info["history"]`), or a decision it makes itself. What still depends on the
function — whether and when it speaks, and a few enumerated outcomes — is listed per
declassifier below and in README.md ("What the declassifiers still release").
"""

from __future__ import annotations

import html
import re
import secrets
from collections.abc import Mapping
from typing import Any

# Tables, as functions/retail.py names them (this module must not import app code: functions/
# is untrusted and may be rewritten by whoever controls a function).
CATALOG = "productCatalogTable"
PRICES = "productPriceTable"
REGISTRATIONS = "photoRegistrationTable"
CARDS = "creditCardsTable"
IMAGES = "storedImagesTable"

MAX_AUTHORIZATION = 2**53 - 1
APPROVAL_FAILURE_RATE = 0.01  # as card_company.py: 1 % of authorizations fail

NEW_ASSIGNMENT = "New Photography Assignment From The Store"
CANCELLED_ASSIGNMENT = "Cancelled Photography Assignment From The Store"
_PHONE = re.compile(r"1\d{10}\Z")
MAX_TEXT_FIELD = 200     # a released product or person name, at most
MAX_DESCRIPTION = 4000   # a released product description, at most

NO_CARD = "No credit card supplied and no credit card stored in DB"
CARD_FAILED = "Credit card authorization failed"

# The catalog fields everybody may see once a product is released: what GET /products and
# GET /products/{id} show. Not `updated`/`updatedBy` (an image's `updatedBy` names the
# photographer's phone) nor anything else a writer put in the record.
PUBLIC_PRODUCT_FIELDS = ("brand", "name", "description", "category")

# Who may release a product to everybody: `info["principal"]` (the principal on whose behalf
# the invocation runs) must be one of these; see README ("Product release").
RELEASERS = frozenset({"owen"})

_CORS_TEXT = {"Access-Control-Allow-Origin": "*", "Content-Type": "text/plain; charset=utf-8"}


class Refused(ValueError):
    """The value is not something this declassifier releases."""


def _need(condition: bool, why: str) -> None:
    if not condition:
        raise Refused(why)


def _read_at(info: Mapping[str, Any], table: str, key: str, *labels: str) -> Any:
    """The newest value of `key` written at exactly one of `labels` (a trusted read). A plain
    read at the declassifier's max_label would also return a facet written under the same key
    by code at any label below it (review: code at client-cc:alice wrote CARDS["bob"] and so
    decided Bob's approvals; code at client:alice forged a registration and a product)."""
    facets = info.get("facets")
    _need(callable(facets), "no trusted store read")
    for value, at in facets(table, key):  # type: ignore[misc]
        if at in labels:
            return value
    return None


def _short_text(value: Any, limit: int = MAX_TEXT_FIELD) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise Refused("text field")
    return value


def friendly_name(origin: Any) -> str:
    """functions/retail.py's rule, repeated here: the last meaningful part of an origin.
    (Repeated, not imported: the policy runs in the monitor, and importing an app module
    would run untrusted code there.)"""
    parts = origin.split("/") if isinstance(origin, str) else []
    if len(parts) >= 4:
        return parts[3]
    if len(parts) in (2, 3):
        return parts[-1]
    return "UNKNOWN"


def assignment_text(name: str, product_name: str, merchant: str) -> str:
    return f"Hello {name}! Please snap a pic of: {product_name} Created by: {merchant}"


def unassignment_text(name: str) -> str:
    return f"Hello {name}. You are unassigned. We will send an assignment soon!"


# ------------------------------------------------------------------ email (channel "email")
def release_assignment_email(value: Mapping[str, Any], info: Mapping[str, Any]) -> dict[str, Any]:
    """message / unmessage: the assignment email, built here from the store, never from text
    the function wrote.

    The function names two ids (`value["assignment"] = {"product", "registration"}`); this
    reads the registration and checks that its photographer is the one assigned to that
    product right now, reads the product's name, and renders one of two fixed templates to
    that photographer's phone address. `to`, `subject`, `text` and `html` of the value are
    ignored (the IFC-off baseline sends them as they are; a correct function renders the same).

    Still up to the function: whether, and how often, it sends this truthful email to the
    photographer currently assigned (README, "What the declassifiers still release")."""
    function = info.get("function")
    _need(function in ("message", "unmessage"), "not an assignment email")
    # The workflow runs message and unmessage at owner; anywhere else (an invocation at
    # client:alice, say) they could have planted the rows read below.
    _need(info.get("label") == "owner", "assignment emails are sent at owner")
    ids = value.get("assignment") if isinstance(value, Mapping) else None
    if not isinstance(ids, Mapping):
        raise Refused("the email names no assignment")
    product_id, registration_id = ids.get("product"), ids.get("registration")
    if not isinstance(product_id, str) or not isinstance(registration_id, str):
        raise Refused("assignment ids")
    # The owner's own rows only: `assign` writes the registration it claims at owner, and
    # catalog_builder the catalog entry.
    registration = _read_at(info, REGISTRATIONS, registration_id, "owner")
    _need(isinstance(registration, Mapping), "no such photographer")
    # The photographer actually assigned: `assign` wrote the product id into their
    # registration, and `unmessage` clears it only after the email has gone out.
    _need(registration.get("assignment") == product_id, "not this photographer's assignment")
    phone = registration.get("phone")
    _need(isinstance(phone, str) and bool(_PHONE.match(phone)), "phone")
    name = _short_text(registration.get("name", ""))
    if function == "message":
        product = _read_at(info, CATALOG, product_id, "owner", "bottom")
        _need(isinstance(product, Mapping), "no such product")
        # `assign` records the product event's origin in the registration it claims.
        merchant = _short_text(friendly_name(registration.get("updatedBy")))
        subject = NEW_ASSIGNMENT
        text = assignment_text(name, _short_text(product.get("name")), merchant)
    else:
        subject = CANCELLED_ASSIGNMENT
        text = unassignment_text(name)
    return {"to": f"{phone}@photogs.com", "subject": subject, "text": text,
            "html": f"<p>{html.escape(text)}</p>"}


# ------------------------------------------------------------------ images (channel "images")
def release_image_request(value: Mapping[str, Any], info: Mapping[str, Any]) -> dict[str, Any]:
    """receive: a plain GET of the image URL the photographer sent (no body, no headers).

    Only from an invocation still at the label the photographer's request came in at
    (`photographer:<principal>`, nothing raised: empty history), so the URL can carry nothing
    above the photographer — the request, their own registration — whatever the function is.
    A receive that has raised to the owner's label to look at the assignment downloads nothing.
    """
    _need(info.get("function") == "receive", "only receive downloads images")
    principal = info.get("principal")
    _need(isinstance(principal, str) and bool(principal), "on behalf of nobody")
    _need(info.get("label") == f"photographer:{principal}", "not at the photographer's label")
    _need(not info.get("history"), "the function has read above the photographer's label")
    _need(isinstance(value, Mapping), "request")
    _need(str(value.get("method", "")).upper() == "GET", "only GET")
    _need(not value.get("body"), "no request body")
    url = value.get("url")
    _need(isinstance(url, str) and len(url) <= 2048, "url")
    timeout = value.get("timeout")
    if not isinstance(timeout, int | float) or isinstance(timeout, bool):
        timeout = None
    return {"method": "GET", "url": url, "headers": {}, "body": None, "timeout": timeout}


# ------------------------------------------------------------------ replies (channel "response")
def release_reply(value: Any, info: Mapping[str, Any]) -> Any:
    """Replies to an invoker below the function's final label, by function.

    Called for every outcome of such an invocation (`info["status"]`: "ok", "error",
    "timeout", "crash", or "withheld" when the label rose beyond this declassifier's
    max_label). Each function's reply below is decided so that the outcome reveals at most
    what is listed there; a refusal (raise) gives the caller the runtime's fixed refusal, and
    happens only on conditions fixed before the function read anything above its caller."""
    function = info.get("function")
    if function == "receive":
        return _receive_reply(value, info)
    if function == "card_company":
        return _card_company_reply(value, info)
    if function == "read_product":
        return _release(value, info)
    raise Refused(f"no reply of {function!r} is declassified")


def thanks_text(principal: str) -> str:
    return f"Thanks so much {principal}!"


def _text_reply(status: int, body: str) -> dict[str, Any]:
    return {"statusCode": status, "headers": dict(_CORS_TEXT), "body": body}


def _receive_reply(value: Any, info: Mapping[str, Any]) -> dict[str, Any]:
    # receive raises from photographer:<principal> to owner to find the caller's assignment
    # and complete it. What comes back is one of two fixed replies: "Thanks so much
    # <principal>!" (the caller's own name, which they know) when the function says the photo
    # completed their assignment, "ServerError" for anything else — any other value, error,
    # timeout, crash or escape. That one bit per request (was the photo taken?) is the
    # deliberate release here; no text the function wrote goes out.
    principal = info.get("principal")
    if not isinstance(principal, str) or not principal:
        raise Refused("on behalf of nobody")
    history = info.get("history") or []
    _need(bool(history) and history[0] == f"photographer:{principal}",
          "receive answers photographers at their own label")
    thanks = thanks_text(principal)
    if (info.get("status", "ok") == "ok" and isinstance(value, Mapping)
            and value.get("statusCode") == 200 and value.get("body") == thanks):
        return _text_reply(200, thanks)
    return _text_reply(200, "ServerError")


def _card_company_reply(value: Any, info: Mapping[str, Any]) -> dict[str, Any]:
    # card_company is invoked by the purchase tasks at the buyer's label client:W and raises
    # from there (history[0]); W is taken from that label, never from the value.
    history = info.get("history") or []
    family, _, client = str(history[0] if history else "").partition(":")
    _need(family == "client" and bool(client), "card replies go to a client's own label")
    label = info.get("label")
    if label == f"client-cc:{client}":
        # Storing W's card: the function at client-cc:W sees nothing but W's own data (and
        # public data), so whether it stored the card is W's to know.
        ok = info.get("status", "ok") == "ok" and isinstance(value, Mapping)
        return {"stored": ok and value.get("stored") is True}
    _need(label == "cc-company", "not a card company decision")
    # Authorizing with W's stored card. At cc-company every client's card is visible, so the
    # decision is made HERE, from the store, and the function's value and outcome are ignored:
    # approved iff W has a stored card (W's own data) and a 1 % random failure does not hit,
    # with an authorization code minted here. Nothing of another client's card can steer it.
    # (A purchase that brings its own card is decided by card_company at client:W, below
    # cc-company, and never reaches this declassifier.)
    if _read_at(info, CARDS, client, f"client-cc:{client}") is None:
        return {"approved": "false", "failureReason": NO_CARD}
    if secrets.randbelow(10_000) < int(APPROVAL_FAILURE_RATE * 10_000):
        return {"approved": "false", "failureReason": CARD_FAILED}
    return {"approved": "true", "authorization": secrets.randbelow(MAX_AUTHORIZATION)}


def public_item(product_id: str, item: Any) -> dict[str, Any] | None:
    """The part of a catalog record that a release publishes (read_product.py applies the same
    rule, so that the IFC-off baseline publishes the same)."""
    if not isinstance(item, Mapping):
        return None
    out: dict[str, Any] = {}
    for field in PUBLIC_PRODUCT_FIELDS:
        v = item.get(field)
        limit = MAX_DESCRIPTION if field == "description" else MAX_TEXT_FIELD
        if isinstance(v, str) and len(v) <= limit:
            out[field] = v
    # The image is a reference to the stored image of this very product, nothing else.
    if item.get("image") == f"{IMAGES}/{product_id}":
        out["image"] = item["image"]
    return out


def public_price(price: Any) -> str | None:
    return price if isinstance(price, str) and price.isdigit() and len(price) <= 12 else None


def _release(value: Any, info: Mapping[str, Any]) -> dict[str, Any]:
    # The owner publishes a product: this reads the catalog entry and the price itself and
    # releases their public fields, whatever the function returned beside the product id.
    # Only on behalf of a releaser: invocations on behalf of nobody (stream deliveries,
    # workflow tasks) carry no principal and are refused, whatever their outcome.
    principal = info.get("principal")
    _need(isinstance(principal, str) and principal in RELEASERS,
          "only the owner releases products")
    product_id = value.get("id") if isinstance(value, Mapping) else None
    not_found = {"id": None, "item": None, "price": None}
    if info.get("status", "ok") != "ok" or not isinstance(product_id, str) \
            or len(product_id) > MAX_TEXT_FIELD:
        return not_found
    # The owner's entry, or the released copy (written at bottom: public already).
    item = public_item(product_id, _read_at(info, CATALOG, product_id, "owner", "bottom"))
    if item is None:  # no such product: the id the function named does not go out
        return not_found
    return {"id": product_id, "item": item,
            "price": public_price(_read_at(info, PRICES, product_id, "owner", "bottom"))}
