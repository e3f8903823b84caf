"""What both backends of the engine tables provide (trusted).

The engines never speak SQL: they call the methods of :class:`EngineDB`, implemented once for
SQLite (``sqlite.py``) and once for PostgreSQL (``postgres.py``) and chosen by the store URL.

Claims. With several engines on one database (several processes or machines), a stream lane
(stream, consumer, partition, label) and a workflow execution must be driven by one engine at
a time. An engine :meth:`~EngineDB.claim`\\ s a key before it delivers the lane's next batch or
runs the execution, and :meth:`~EngineDB.release`\\ s it afterwards; a claim ends by itself
when its holder's process (or its connection to the database) dies, so another engine can
take the work over. Every write that moves claimed state (a lane's checkpoint, an execution's
frames, history and status) names its claim and is refused with :class:`ClaimLost` when the
writer no longer holds it: an engine that lost its claim never overwrites the new holder's
progress. How each backend implements claims is in its module docstring.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any


def dumps(value: Any) -> str:
    """Canonical compact JSON; NaN and infinities are not JSON and are refused."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


class ClaimLost(Exception):
    """This engine no longer holds the claim a write was made under; nothing was written.

    Another engine has taken (or may take) the work over from the last recorded state, so
    the writer drops it (at-least-once: a step in flight may run again there).
    """


def lane_claim(stream: str, consumer: str, partition: str, label: str) -> str:
    """The claim key of a delivery lane."""
    return "lane:" + dumps([stream, consumer, partition, label])


EXEC_CLAIM_PREFIX = "exec:"


def exec_claim(exec_id: str) -> str:
    """The claim key of a workflow execution (the PostgreSQL backend builds it in SQL too)."""
    return EXEC_CLAIM_PREFIX + exec_id


@dataclass(frozen=True)
class StoredRecord:
    id: int
    partition: str
    label: str
    lane_seq: int
    data: str
    arrived: float


@dataclass
class Lane:
    """One delivery lane: (stream, consumer, partition, label) and its checkpoint."""

    stream: str
    consumer: str
    partition: str
    label: str
    last_id: int  # checkpoint: every record of the lane with id <= last_id is done
    attempts: int
    next_at: float
    newest: int  # the lane's newest record id

    @property
    def claim(self) -> str:
        return lane_claim(self.stream, self.consumer, self.partition, self.label)


class EngineDB(ABC):
    """The durable tables of both engines, behind methods (thread-safe)."""

    #: How often a workflow engine looks for executions nobody runs (seconds), or None when
    #: no other engine can share the database (then only `resume()` at start adopts).
    adopt_interval: float | None = None

    @classmethod
    def open(cls, url: str) -> EngineDB:
        """Open (creating the tables if needed) the engine tables of the store at `url`."""
        return open_engine_db(url)

    @abstractmethod
    def close(self) -> None:
        """Close the connections; every claim of this object ends."""

    # ------------------------------------------------------------------ claims
    @abstractmethod
    def claim(self, key: str) -> bool:
        """Take the exclusive claim `key` if no engine (this object included) holds it."""

    @abstractmethod
    def release(self, key: str) -> None:
        """Give up a claim this object holds (no-op otherwise)."""

    @abstractmethod
    def claim_running_executions(self, exclude: Collection[str]) -> list[dict[str, Any]]:
        """Claim every RUNNING execution whose id is not in `exclude` and that no engine
        holds; their rows (as :meth:`executions`), oldest first."""

    def is_transient(self, exc: BaseException) -> bool:
        """Whether `exc` means "the database is unreachable for now, or the claim was lost",
        so that an engine should drop the work and let it be resumed, not fail it."""
        return isinstance(exc, ClaimLost)

    # ------------------------------------------------------------------ streams
    @abstractmethod
    def append_record(self, stream: str, partition: str, label: str, data: str,
                      now: float) -> tuple[int, int]:
        """Append a record; returns (global id, the lane's visible sequence number).

        Within a lane, ids become visible in increasing order (a checkpoint "every id <= n
        is done" must never skip a record committed late), and the per-(stream, label)
        number is never handed out twice."""

    @abstractmethod
    def lanes(self, stream: str, consumer: str) -> list[Lane]:
        """Every lane of `stream` with records, with `consumer`'s checkpoint of it."""

    @abstractmethod
    def first_pending(self, stream: str, partition: str, label: str, after: int) -> int | None:
        """The smallest record id of the lane above `after`, or None."""

    @abstractmethod
    def lane_records(self, stream: str, partition: str, label: str, after: int, before: int,
                     limit: int) -> list[StoredRecord]:
        """The lane's records with after < id < before, in order, at most `limit`."""

    @abstractmethod
    def set_checkpoint(self, lane: Lane, last_id: int, attempts: int, next_at: float,
                       error: str | None = None,
                       dead: list[tuple[int, str, str | None, int]] | None = None) -> None:
        """Move a lane's checkpoint (the writer holds ``lane.claim``, else ClaimLost);
        `dead` = [(record id, label, error, attempts)] to dead-letter in the same
        transaction. A checkpoint never goes backwards: a write with a smaller `last_id`
        than the stored one changes nothing."""

    @abstractmethod
    def add_dead_letters(self, stream: str, consumer: str, partition: str, label: str,
                         record_ids: list[int], attempts: int, error: str | None) -> None:
        """Dead-letter records at `label` (a detached retry's final failure)."""

    @abstractmethod
    def stream_rows(self, stream: str, newest_first: bool, limit: int,
                    visible: Callable[[str], bool]) -> list[StoredRecord]:
        """Records of a stream whose label passes `visible`, in global order."""

    @abstractmethod
    def dead_letter_rows(self, stream: str) -> list[tuple[Any, ...]]:
        """(consumer, partition, dl label, attempts, error, time, record label, lane_seq,
        data) per dead letter of `stream`, oldest first."""

    # ------------------------------------------------------------------ workflows
    @abstractmethod
    def create_execution(self, exec_id: str, workflow: str, name: str, label: str,
                         input_text: str, visible_clash: Callable[[str], bool],
                         root_state: str) -> bool:
        """Insert a new execution and its root frame unless a clashing one exists.

        `visible_clash(start_label)` says whether an existing execution of the same name
        counts: only those the starter could see, so the answer depends on nothing above the
        starter's label. The check and the insert are atomic against every other starter.
        """

    @abstractmethod
    def event(self, exec_id: str, label: str, frame_id: str, kind: str, state: str | None,
              detail: Any = None) -> None:
        """Append a history event (claimed: the writer holds the execution's claim)."""

    @abstractmethod
    def save_frame(self, exec_id: str, frame_id: str, *, state: str, step: int,
                   input_text: str, label: str, status: str, retries: dict[str, int],
                   output_text: str | None = None, error: str | None = None,
                   cause: str | None = None, wait_until: float | None = None,
                   token: str | None = None,
                   events: list[tuple[str, str | None, Any]] | None = None,
                   label_of_events: str | None = None, root: bool = False) -> None:
        """Persist one frame transition with its history events, atomically (claimed)."""

    @abstractmethod
    def frame(self, exec_id: str, frame_id: str) -> dict[str, Any] | None:
        """A frame's row: state, step, input, label, status, output, error, cause, retries
        (decoded), wait_until, token, entered."""

    @abstractmethod
    def finish_execution(self, exec_id: str, status: str, label: str,
                         output_text: str | None, error: str | None,
                         cause: str | None) -> None:
        """Record the end of an execution and its history event (claimed)."""

    @abstractmethod
    def set_execution_label(self, exec_id: str, label: str) -> None:
        """Set the label guarding an execution's status fields (claimed)."""

    @abstractmethod
    def executions(self, *, workflow: str | None = None, status: str | None = None,
                   exec_id: str | None = None, name: str | None = None
                   ) -> list[dict[str, Any]]:
        """Execution rows matching every given filter, oldest first."""

    @abstractmethod
    def history(self, exec_id: str) -> list[dict[str, Any]]:
        """An execution's history events in order (each with its label)."""

    @abstractmethod
    def new_token(self, token: str, exec_id: str, frame_id: str, label: str,
                  activity: str | None, input_text: str) -> None:
        """Create a pending task token (a second create of the same token is ignored)."""

    @abstractmethod
    def token(self, token: str) -> dict[str, Any] | None:
        """A token's row, or None."""

    @abstractmethod
    def settle_token(self, token: str, status: str, output_text: str | None,
                     error: str | None, cause: str | None) -> bool:
        """Close a pending/claimed token; False when it was already closed (first wins)."""

    @abstractmethod
    def claim_activity_task(self, activity: str, label: str,
                            exec_id: str | None) -> tuple[str, str] | None:
        """Hand out the oldest pending task of `activity` at exactly `label` (to exactly one
        worker, whichever engine it asks): (token, input), or None."""


def open_engine_db(url: str) -> EngineDB:
    """The engine tables of the store at `url` (``sqlite:///...`` or ``postgresql://...``)."""
    # The store's own URL checks, so that both refuse the same URLs with the same words.
    from trapeze.store import _POSTGRES, _scheme, _unsupported

    scheme = _scheme(url)
    if scheme == "sqlite":
        from trapeze.runtime.engine_store.sqlite import SqliteEngineDB

        return SqliteEngineDB.from_url(url)
    if scheme in _POSTGRES:
        # Imported on demand, like the store: SQLite-only setups need no psycopg.
        from trapeze.runtime.engine_store.postgres import PostgresEngineDB

        return PostgresEngineDB.from_url(url)
    raise _unsupported(url, scheme)
