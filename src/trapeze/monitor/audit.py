"""The append-only audit log: refused flows, raises, declassifications, violations, kills (TCB).

Each entry carries the label of the invocation it is about, so that reading the log is itself
subject to the policy: a principal sees the entries whose label flows to its clearance.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from trapeze.monitor.invocation import Invocation

AUDIT_KINDS = ("refused", "raise", "declassify", "protocol", "kill", "timeout", "auth")


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    time: float
    kind: str
    function: str | None
    request_id: str | None
    label: str
    detail: dict[str, Any] = field(default_factory=dict)


class AuditSink(Protocol):
    def record(self, kind: str, inv: Invocation | None, detail: dict[str, Any],
               *, label: str | None = None) -> None: ...

    def entries(self) -> list[AuditEntry]: ...


class MemoryAudit:
    """An in-process audit log (tests, and runtimes without a system store)."""

    def __init__(self, bottom: str = "bottom") -> None:
        self._entries: list[AuditEntry] = []
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self._bottom = bottom

    def record(self, kind: str, inv: Invocation | None, detail: dict[str, Any],
               *, label: str | None = None) -> None:
        entry_label = label or (inv.label if inv is not None else self._bottom)
        with self._lock:
            self._entries.append(AuditEntry(
                next(self._seq), time.time(), kind,
                inv.function if inv else None, inv.request_id if inv else None,
                entry_label, dict(detail),
            ))

    def entries(self) -> list[AuditEntry]:
        with self._lock:
            return list(self._entries)
