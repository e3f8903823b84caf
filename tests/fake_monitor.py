"""The test double of the monitor that sandbox and attack tests hand to `Sandbox.run()`."""

from __future__ import annotations

from typing import Any

from trapeze.errors import FlowError


class FakeMonitor:
    """The test double of the monitor: a dict store and a current label."""

    def __init__(self, label: str = "public") -> None:
        self.store: dict[tuple[str, str], Any] = {}
        self.label = label
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, op: str, args: dict[str, Any]) -> Any:
        self.calls.append((op, args))
        if op == "kv.get":
            return self.store.get((args["table"], args["key"]))
        if op == "kv.put":
            self.store[(args["table"], args["key"])] = args["value"]
            return True
        if op == "label.current":
            return self.label
        if op == "label.raise":
            if args["label"] == "bottom":
                raise FlowError("cannot lower the label from public to bottom")
            self.label = args["label"]
            return self.label
        raise RuntimeError(f"secret internal detail for {op}")
