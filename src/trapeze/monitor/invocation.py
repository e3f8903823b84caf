"""The state the monitor keeps for one invocation (TCB).

Everything here lives on the trusted side. The guest never holds a reference to it: it only
sends requests over its socket, and the monitor looks the invocation up by the socket it came
from, so a message cannot name another invocation or another label.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Invocation:
    request_id: str
    function: str
    label: str  # the current label: only ever goes up (raise_label) during the invocation
    response_bound: str  # the label of whoever waits for the response
    deadline: float  # epoch seconds
    principal: str | None = None
    parent: str | None = None  # request id of the invoking function, if any
    depth: int = 0  # nesting of synchronous invokes (bounded, so a cycle cannot hang the pool)
    history: list[str] = field(default_factory=list)  # labels held before each raise
    # Called once, at the moment the label rises above the response bound: the invoker gets
    # the fixed "withheld" reply then, whatever happens afterwards.
    on_withheld: Callable[[Invocation], None] | None = None
    withheld: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def context_for_guest(self) -> dict[str, object]:
        """What the handler's `context` argument carries: nothing secret, no credentials."""
        return {
            "function_name": self.function,
            "request_id": self.request_id,
            "deadline": self.deadline,
            "label": self.label,
        }

    def remaining_s(self) -> float:
        return max(0.0, self.deadline - time.time())
