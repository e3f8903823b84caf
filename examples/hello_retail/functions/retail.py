"""Helpers shared by the Hello Retail handlers: schemas, validation, time, HTTP replies.

Untrusted like every handler: it runs inside the sandbox and only calls the guest API. It is a
plain module next to the handlers (the app directory is on the import path of every function).
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime
from typing import Any

STREAM = "retail"

# Table names as the original app used them, so the port can be read next to it.
CATEGORIES = "productCategoryTable"
CATALOG = "productCatalogTable"
PRICES = "productPriceTable"
REGISTRATIONS = "photoRegistrationTable"
ASSIGNMENTS = "photoAssignmentsTable"
IMAGES = "storedImagesTable"
CARDS = "creditCardsTable"
USERS = "usersTable"  # our port: who has logged in (replaces authenticationTable, see README)

INGRESS = "com.nordstrom/retail-stream-ingress/1-0-0"
EGRESS = "com.nordstrom/retail-stream-egress/1-0-0"
PRODUCT_CREATE = "com.nordstrom/product/create/1-0-0"
PRODUCT_IMAGE = "com.nordstrom/product/image/1-0-0"
PRODUCT_PURCHASE = "com.nordstrom/product/purchase/1-0-0"
UPDATE_PHONE = "com.nordstrom/user-info/update-phone/1-0-0"
LOGIN = "com.nordstrom/user-info/login/1-0-0"
ADD_ROLE = "com.nordstrom/user-info/add-role/1-0-0"

# data.schema -> (required fields, optional fields); every field is a string and nothing else
# is allowed. No `user`/`pass`: credentials are the gateway's business in this port.
DATA_SCHEMAS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    PRODUCT_CREATE: (
        frozenset({"schema", "id", "brand", "name", "description", "category"}),
        frozenset({"price"}),
    ),
    UPDATE_PHONE: (frozenset({"schema", "id", "phone"}), frozenset()),
    PRODUCT_IMAGE: (frozenset({"schema", "id", "image"}), frozenset()),
    PRODUCT_PURCHASE: (frozenset({"schema", "id"}), frozenset()),
    LOGIN: (frozenset({"schema", "id", "name"}), frozenset()),
    ADD_ROLE: (frozenset({"schema", "id", "role"}), frozenset()),
}
# The event writer accepts these; product/image only ever comes from `report`.
WRITER_SCHEMAS = frozenset(DATA_SCHEMAS) - {PRODUCT_IMAGE}

# Where released products, prices and categories are written: the bottom of the lattice, the
# label anonymous callers run at, so that everybody can browse them.
RELEASE_LABEL = "bottom"

# "registrations set to 3" in the paper's port; a deployment may set another count in the
# environment the manifest gives `processor` (the benchmarks' same-work variant does).
ASSIGNMENTS_PER_REGISTRATION = int(os.environ.get("ASSIGNMENTS_PER_REGISTRATION", "3"))
REGISTRATION_TTL_S = 2 * 60 * 60

CORS = {"Access-Control-Allow-Origin": "*"}

# RFC 3339 date-time (what JSON Schema's "date-time" format means), checked strictly because
# the original's validator enforced it.
_DATE_TIME = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})\Z"
)


def now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_from_epoch(value: Any) -> str:
    """Arrival timestamps may come as epoch seconds or milliseconds, or already as text."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        seconds = value / 1000 if value > 1e11 else value
        return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace(
            "+00:00", "Z"
        )
    return iso_now()


def is_date_time(value: Any) -> bool:
    if not isinstance(value, str) or not _DATE_TIME.match(value):
        return False
    try:
        datetime.fromisoformat(value.replace("z", "Z").replace("t", "T"))
    except ValueError:  # e.g. month 13: the pattern alone would let it through
        return False
    return True


def data_errors(data: Any) -> list[str]:
    """Why `data` is not a valid event payload (empty when it is)."""
    if not isinstance(data, dict):
        return ["data must be an object"]
    schema = data.get("schema")
    if not isinstance(schema, str):
        return ["schema must be a string"]
    if schema not in DATA_SCHEMAS:
        return [f"schema {schema!r} is not a registered event schema"]
    required, optional = DATA_SCHEMAS[schema]
    errors = [f"missing required field {f!r}" for f in sorted(required - set(data))]
    errors += [f"field {f!r} is not allowed" for f in sorted(set(data) - required - optional)]
    errors += [f"field {k!r} must be a string" for k, v in data.items() if not isinstance(v, str)]
    return errors


def ingress_errors(envelope: Any) -> list[str]:
    """Why `envelope` is not a valid ingress envelope (empty when it is)."""
    if not isinstance(envelope, dict):
        return ["the envelope must be an object"]
    errors = []
    if envelope.get("schema") != INGRESS:
        errors.append(f"schema must be {INGRESS!r}")
    if not isinstance(envelope.get("origin"), str):
        errors.append("origin must be a string")
    if not is_date_time(envelope.get("timeOrigin")):
        errors.append("timeOrigin must be an RFC 3339 date-time")
    if "followsFrom" in envelope and not isinstance(envelope["followsFrom"], str):
        errors.append("followsFrom must be a string")
    extra = set(envelope) - {"schema", "origin", "timeOrigin", "data", "followsFrom"}
    errors += [f"field {f!r} is not allowed in the envelope" for f in sorted(extra)]
    data = envelope.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("schema"), str):
        errors.append("data must be an object with a schema")
    return errors


def friendly_name(origin: Any) -> str:
    """The last meaningful part of an origin such as 'hello-retail/testid/peter'."""
    parts = origin.split("/") if isinstance(origin, str) else []
    if len(parts) >= 4:
        return parts[3]
    if len(parts) in (2, 3):
        return parts[-1]
    return "UNKNOWN"


def reply(status: int, body: Any) -> dict[str, Any]:
    """An API-Gateway proxy response with a JSON body and the original's CORS header."""
    return {
        "statusCode": status,
        "headers": {**CORS, "Content-Type": "application/json"},
        "body": json.dumps(body),
    }


def text_reply(status: int, text: str) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {**CORS, "Content-Type": "text/plain; charset=utf-8"},
        "body": text,
    }


def json_body(event: dict[str, Any]) -> Any:
    """The request body parsed as JSON; ValueError when it is absent or malformed."""
    body = event.get("body")
    if body is None or body == "":
        raise ValueError("the request has no body")
    if event.get("isBase64Encoded"):
        raise ValueError("the body must be UTF-8 JSON")
    return json.loads(body)


def scan_all(table: str, prefix: str = "") -> list[tuple[str, Any]]:
    """Every visible row of `table`, following the store's pagination."""
    from trapeze.guest import kv

    rows: list[tuple[str, Any]] = []
    after: str | None = None
    while True:
        page = kv.scan(table, prefix=prefix, start_after=after, limit=500)
        rows.extend(page)
        if len(page) < 500:
            return rows
        after = page[-1][0]


def is_already_exists(exc: BaseException) -> bool:
    """Whether a workflow start failed because an execution with that name exists.

    Matched by kind and by message so that it works whatever exception class the guest API
    maps the monitor's AlreadyExists error to.
    """
    kind = str(getattr(exc, "kind", "")) + type(exc).__name__
    return "AlreadyExists" in kind or "already exist" in str(exc).lower()
