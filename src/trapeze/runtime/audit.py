"""The monitor's audit sink, backed by the store's append-only system table (TCB)."""

from __future__ import annotations

from typing import Any

from trapeze.monitor.audit import AuditEntry
from trapeze.monitor.invocation import Invocation


class StoreAudit:
    def __init__(self, system: Any, bottom: str) -> None:
        self._system = system
        self._bottom = bottom

    def record(self, kind: str, inv: Invocation | None, detail: dict[str, Any],
               *, label: str | None = None) -> None:
        self._system.append_audit(
            kind,
            function=inv.function if inv else None,
            request_id=inv.request_id if inv else None,
            label=label or (inv.label if inv else self._bottom),
            detail=detail,
        )

    def entries(self) -> list[AuditEntry]:
        return [
            AuditEntry(r.seq, r.time, r.kind, r.function, r.request_id, r.label or self._bottom,
                       r.detail)
            for r in self._system.audit()
        ]
