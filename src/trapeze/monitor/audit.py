"""The append-only audit log: refused flows, raises, declassifications, violations, kills (TCB).

Each entry carries the label of the invocation it is about, so that reading the log is itself
subject to the policy: a principal sees the entries whose label flows to its clearance.

Cursors, not seqs. An entry's ``seq`` (and a log line's) is a store-wide counter: the gap
between two seqs a viewer sees counts the entries written in between at labels it may not
see, and high code chooses that count (N refused requests, N entries). So ``seq`` stays on
the trusted side (paging through the tables), and a viewer gets, for each row it sees, a
``cursor``: the row's position, counting from 1, among the rows of the same query (viewer
label, and a filter such as ``function``) that it may see. Pages continue with
``after=cursor``. A cursor is thus a function of the viewer's own view only, identical
across runs that differ above the viewer's label (exact noninterference, as for stream
sequence numbers and workflow history ids), with no key to keep secret; an encrypted seq
would differ between any two runs and hide the count only computationally, and a forged
ciphertext could land between hidden rows. The price: a page after a cursor walks the
table from its start, as ``newest`` does anyway. Rows are only appended, in seq order, so
a row's cursor does not change while the policy does not.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from trapeze.errors import InvalidArgument
from trapeze.monitor.invocation import Invocation

R = TypeVar("R")

AUDIT_KINDS = ("refused", "raise", "declassify", "protocol", "kill", "timeout", "auth")


@dataclass(frozen=True)
class AuditEntry:
    seq: int  # store-wide order, trusted side only: never shown to a viewer (module doc)
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
        """Every entry, with its seq: the trusted side's view."""
        with self._lock:
            return list(self._entries)

    def visible_to(self, visible: Callable[[str], bool], *, after: int | None = None,
                   limit: int = 1000) -> list[dict[str, Any]]:
        """A viewer's entries (those whose label satisfies ``visible``), as
        ``audit_row``s with cursors; see ``for_viewer`` for ``after`` and ``limit``."""
        rows = (e for e in self.entries() if visible(e.label))
        return [audit_row(n, e) for n, e in for_viewer(rows, after=after, limit=limit)]


def check_cursor(after: object) -> int | None:
    """``after`` as a viewer may give it: None or a cursor (an int >= 0)."""
    if after is None:
        return None
    if type(after) is not int or after < 0:
        raise InvalidArgument(f"after must be a cursor (an int >= 0), got {after!r:.40}")
    return after


def for_viewer(rows: Iterable[R], *, after: int | None, limit: int) -> list[tuple[int, R]]:
    """Number the rows one viewer sees (``rows``: exactly those, oldest first) with their
    cursors, 1, 2, ... (module doc). Without ``after``, the newest ``limit`` of them;
    with it, the first ``limit`` whose cursor is above ``after``. Oldest first."""
    after = check_cursor(after)
    if type(limit) is not int or limit < 1:
        raise InvalidArgument(f"limit must be an int >= 1, got {limit!r:.40}")
    numbered = enumerate(rows, start=1)
    if after is None:
        return list(deque(numbered, maxlen=limit))
    return list(itertools.islice(((n, r) for n, r in numbered if n > after), limit))


def audit_row(cursor: int, entry: Any) -> dict[str, Any]:
    """An audit entry (AuditEntry or the store's AuditRecord) as a viewer gets it."""
    return {"cursor": cursor, "time": entry.time, "kind": entry.kind,
            "function": entry.function, "request_id": entry.request_id,
            "label": entry.label, "detail": entry.detail}


def log_row(cursor: int, record: Any) -> dict[str, Any]:
    """A log line (the store's LogRecord) as a viewer gets it."""
    return {"cursor": cursor, "time": record.time, "function": record.function,
            "request_id": record.request_id, "label": record.label, "text": record.text}
