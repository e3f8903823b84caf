"""The `context` object handed to `handler(event, context)`, Lambda-style."""

from __future__ import annotations

import time
from typing import Any


class Context:
    def __init__(self, data: dict[str, Any]) -> None:
        self.function_name: str = str(data.get("function_name", ""))
        self.request_id: str = str(data.get("request_id", ""))
        self.aws_request_id = self.request_id
        self.deadline: float = float(data.get("deadline", time.time() + 3600))
        # Lambda code logs it or splits it for the function's name; an ARN-shaped name of
        # the function (no account or region: there are none) keeps such code working.
        self.invoked_function_arn: str = str(
            data.get("invoked_function_arn") or f"arn:trapeze:function:{self.function_name}")
        self.memory_limit_in_mb = data.get("memory_limit_in_mb")
        self._label = data.get("label")
        self._raw = dict(data)

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.time()) * 1000))

    @property
    def label(self) -> Any:
        """The invocation's current label, asked of the monitor (raises change it)."""
        from trapeze.guest import label

        try:
            return label.current()
        except Exception:
            return self._label

    def get(self, key: str, default: Any = None) -> Any:
        return self._raw.get(key, default)

    def __repr__(self) -> str:
        return f"<Context {self.function_name} {self.request_id}>"
