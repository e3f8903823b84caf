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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trapeze.monitor.monitor import Declassifier


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
    # Set at the first raise above the response bound that a response declassifier covers:
    # from then on the reply is whatever that declassifier makes of the invocation's outcome
    # (every outcome, not only a returned value), never the "withheld" reply at a later raise.
    reply_declassifier: Declassifier | None = None
    # The label a raise beyond the declassifier's max_label was decided at (None: no such
    # raise). The declassifier is then told only that much: status "withheld", at this label.
    escaped_at: str | None = None
    escaped_history: tuple[str, ...] = ()  # the label history at that raise, before it
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
