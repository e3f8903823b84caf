"""Handlers used by the platform tests: ordinary code plus a few deliberate misbehaviours."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from trapeze.guest import channels, functions, http, kv, label


def _body(event: dict[str, Any]) -> Any:
    body = event.get("body")
    return json.loads(body) if body else {}


def echo(event: Any, context: Any) -> Any:
    return {"event": event, "label": label.current(), "function": context.function_name}


def notes(event: dict[str, Any], context: Any) -> Any:
    """POST stores the caller's note under its principal; GET lists what the caller sees."""
    who = event["requestContext"]["principal"]
    if event["httpMethod"] == "POST":
        note = _body(event)
        kv.put("notes", f"{who}/{note['id']}", note["text"])
        return {"statusCode": 201, "body": json.dumps({"stored": note["id"]})}
    rows = kv.scan("notes", limit=1000)
    return {"statusCode": 200, "headers": {"content-type": "application/json"},
            "body": json.dumps({k: v for k, v in rows})}


def raiser(event: dict[str, Any], context: Any) -> Any:
    """Raise to event["to"], then return, raise, time out, crash or write."""
    args = _body(event) if "httpMethod" in event else event
    label.raise_to(args["to"])
    then = args.get("then", "return")
    if then == "raise":
        raise RuntimeError("secret-dependent failure")
    if then == "sleep":
        time.sleep(60)
    if then == "crash":
        os._exit(3)
    if then == "write":
        kv.put("raised", "k", args.get("value", "v"))
    return {"after": "raise", "secret": "s3cr3t"}


def egress(event: dict[str, Any], context: Any) -> Any:
    if "label" in event:
        label.raise_to(event["label"])
    r = http.request(event.get("method", "GET"), event["url"])
    return {"status": r["status"], "body": r["body"].decode()}


def mailer(event: dict[str, Any], context: Any) -> Any:
    if "label" in event:
        label.raise_to(event["label"])
    return channels.send("email", {"to": event["to"], "subject": event["subject"],
                                   "text": event["text"]})


def caller(event: dict[str, Any], context: Any) -> Any:
    if event.get("async"):
        return {"request_id": functions.invoke_async(event["function"], event.get("event"),
                                                     label=event.get("label"))}
    return {"result": functions.invoke(event["function"], event.get("event"))}


def greeter(event: dict[str, Any], context: Any) -> Any:
    label.raise_to("admin")
    return {"greeting": "hello from above"}
