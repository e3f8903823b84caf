"""POST /events: validate a retail event and append it to the retail stream.

The caller is authenticated by the gateway; the record is stamped (out of band) with the
caller's label, so a photographer's phone number is stored at that photographer's label and an
owner's product at the owner's.
"""

from __future__ import annotations

from typing import Any

from functions.retail import (
    INGRESS,
    STREAM,
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
    written = streams.put(STREAM, envelope, partition_key=body["id"])
    return reply(200, {"stream": STREAM, "partitionKey": body["id"], "record": written})
