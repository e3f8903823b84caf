"""Stream consumer: keeps the category, catalog and price tables up to date.

Each batch holds records of one label; everything written here is at that label, so an
owner's new product stays invisible to clients until it is released.
"""

from __future__ import annotations

from typing import Any

from functions.retail import (
    CATALOG,
    CATEGORIES,
    PRICES,
    PRODUCT_CREATE,
    PRODUCT_IMAGE,
    data_errors,
    ingress_errors,
    now_ms,
)

from trapeze.guest import kv


def put_product(envelope: dict[str, Any]) -> None:
    data, origin, now = envelope["data"], envelope["origin"], now_ms()
    kv.put(CATEGORIES, data["category"], {"updated": now, "updatedBy": origin})
    if "price" in data:
        kv.put(PRICES, data["id"], data["price"])
    # A re-created product loses its image, as in the original.
    kv.put(CATALOG, data["id"], {
        "updated": now,
        "updatedBy": origin,
        "brand": data["brand"],
        "name": data["name"],
        "description": data["description"],
        "category": data["category"],
    })


def put_image(envelope: dict[str, Any]) -> None:
    data = envelope["data"]
    item = kv.get(CATALOG, data["id"])
    if not isinstance(item, dict):
        # Redelivering would not make the product appear; skipping keeps the stream moving.
        print(f"image for unknown product {data['id']!r} skipped")
        return
    item = {**item, "image": data["image"], "updated": now_ms(),
            "updatedBy": envelope["origin"]}
    kv.put(CATALOG, data["id"], item)


def handler(event: dict[str, Any], context: Any) -> None:
    for record in event.get("Records", []):
        envelope = record.get("data")
        problems = ingress_errors(envelope) or data_errors(envelope["data"])
        if problems:
            # Purchase records have no schema at all; like the original, log and skip.
            print(f"record {record.get('sequenceNumber')} skipped: {'; '.join(problems)}")
            continue
        schema = envelope["data"]["schema"]
        if schema == PRODUCT_CREATE:
            put_product(envelope)
        elif schema == PRODUCT_IMAGE:
            put_image(envelope)
