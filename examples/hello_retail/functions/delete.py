"""ReleaseProduct task Delete: fetch the owner's item and price for release.

Despite the name (kept from the original) it deletes nothing. The execution runs at public
(see the README); the owner-labelled data comes from `read_product` through a declassifier.
"""

from __future__ import annotations

from typing import Any

from trapeze.guest import functions


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return functions.invoke("read_product", {"id": str(event["id"])})
