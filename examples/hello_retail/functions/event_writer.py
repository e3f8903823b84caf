"""POST /events: validate a retail event and append it to the retail stream.

The caller is authenticated by the gateway; the record is stamped (out of band) with the
caller's label, so a photographer's phone number is stored at that photographer's label and an
owner's product at the owner's.

Who may write what (`_may_write`): consumers write at the record's label, and a put removes the
facets at or above it, so a record written below the owner's label could replace the owner's
data. Products are created only at the owner's label; a phone is registered only by a
photographer at their own label; a login only by a client, for themselves, at their own label.
"""

from __future__ import annotations

from typing import Any

from functions.retail import (
    INGRESS,
    LOGIN,
    PRODUCT_CREATE,
    STREAM,
    UPDATE_PHONE,
    WRITER_SCHEMAS,
    data_errors,
    ingress_errors,
    iso_now,
    json_body,
    reply,
    text_reply,
)

from trapeze.guest import streams


def _invalid(reason: str, event: Any) -> dict[str, Any]:
    return text_reply(
        400, f"Retail Stream Event Writer Invalid Request: {reason} Event: '{event}'"
    )


def _may_write(schema: str, data: dict[str, Any], request: dict[str, Any]) -> str | None:
    """Why the caller may not write this event (None when they may)."""
    principal, at = request.get("principal"), request.get("label")
    if schema == PRODUCT_CREATE and at != "owner":
        return "only the owner creates products (at the owner label)."
    if schema == UPDATE_PHONE and at != f"photographer:{principal}":
        return "only a photographer registers a phone, at their own label."
    if schema == LOGIN and (at != f"client:{principal}" or data.get("id") != principal):
        return "a client logs in as themselves, at their own label."
    return None


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if event.get("httpMethod") != "POST" or event.get("resource") != "/events":
        return _invalid("expected POST /events.", event.get("path"))
    try:
        body = json_body(event)
    except ValueError as exc:
        return _invalid(f"the body is not JSON ({exc}).", event.get("body"))
    if not isinstance(body, dict):
        return _invalid("the body must be a JSON object.", body)
    origin = body.pop("origin", None)
    schema = body.get("schema")
    if not isinstance(schema, str):
        return _invalid("schema must be a string.", body)
    if schema not in WRITER_SCHEMAS:
        return _invalid(f"schema {schema!r} is not a supported event schema.", body)
    errors = data_errors(body)
    envelope = {"schema": INGRESS, "timeOrigin": iso_now(), "data": body, "origin": origin}
    # Validate the whole envelope here rather than let consumers skip it silently later, as
    # the original did when `origin` was missing.
    errors += ingress_errors(envelope)
    if errors:
        return _invalid("; ".join(errors) + ".", body)
    refused = _may_write(schema, body, event.get("requestContext") or {})
    if refused is not None:
        return text_reply(403, f"Retail Stream Event Writer Refused: {refused}")
    written = streams.put(STREAM, envelope, partition_key=body["id"])
    return reply(200, {"stream": STREAM, "partitionKey": body["id"], "record": written})
