"""What both backends of the engine tables provide, and the steps they share (trusted).

The engines never speak SQL: they call the methods of :class:`EngineDB`, implemented for
SQLite (``sqlite.py``) and for PostgreSQL (``postgres.py``) and chosen by the store URL. The
steps that are the same on both (which statements a method runs, in which transaction, and
how rows become what the engines see) are written once here, over each backend's text of
those statements (:class:`EngineSQL`) and a few primitives (run a statement, open a write
transaction); a backend keeps what differs: its SQL, its connections, its claims and locks,
and the methods that take different steps on each (appending a record, handing out a task).

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
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import AbstractContextManager, closing
from dataclasses import dataclass
from typing import Any, ClassVar


def dumps(value: Any) -> str:
    """Canonical compact JSON; NaN and infinities are not JSON and are refused."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


NUL_STAND_IN = "\ufffd"


def clean_text(text: str | None) -> str | None:
    """`text` fit for a text column of either backend: a NUL (which PostgreSQL refuses in
    text) becomes U+FFFD. For error texts and causes, which may come from guests (an
    exception message, a task's error); JSON columns need nothing (JSON escapes NUL).
    Without this, whether a write fails would depend on the text, and on the backend."""
    if text is None or "\x00" not in text:
        return text
    return text.replace("\x00", NUL_STAND_IN)


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


# The columns the backends select, in the order the rows are read below. They are the same
# columns on both backends, so the SELECT lists are built from these.
RECORD_COLUMNS = "id, partition, label, lane_seq, data, arrived"  # as StoredRecord
FRAME_COLUMNS = ("state", "step", "input", "label", "status", "output", "error", "cause",
                 "retries", "wait_until", "token", "entered")
EXECUTION_COLUMNS = ("id", "workflow", "name", "start_label", "label", "status", "input",
                     "output", "error", "cause", "created", "updated")
TOKEN_COLUMNS = ("exec_id", "frame_id", "label", "activity", "input", "status", "output",
                 "error", "cause")


@dataclass(frozen=True)
class StoredRecord:
    id: int
    partition: str
    label: str
    lane_seq: int
    data: str
    arrived: float

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> StoredRecord:
        """A record from a row of RECORD_COLUMNS."""
        rid, partition, label, lane_seq, data, arrived = row
        return cls(int(rid), partition, label, int(lane_seq), data, float(arrived))


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


@dataclass(frozen=True)
class EngineSQL:
    """A backend's text of the statements that :class:`EngineDB` runs the same way on both.

    Parameters are bound in the order given for each, with the backend's placeholder
    (`param`); rows come back in the order given. The PostgreSQL texts are templates whose
    ``{s}`` the backend fills with its schema when it runs them.
    """

    #: The placeholder of one bound parameter.
    param: str
    # ---------------------------------------------------------------- streams
    #: (consumer, stream) -> per lane of the stream: partition, label, the lane's newest
    #: record id, then the consumer's checkpoint: last_id, attempts, next_at (0 when none).
    lanes: str
    #: (stream, partition, label, after) -> one row: the lane's smallest id above `after`.
    first_pending: str
    #: (stream, partition, label, after, before, limit) -> RECORD_COLUMNS of the lane's
    #: records with after < id < before, by id, at most `limit`.
    lane_records: str
    #: (stream, consumer, partition, label, last_id, attempts, next_at, last_error): upsert
    #: a checkpoint; it changes no row when the stored last_id is larger (never backwards).
    upsert_checkpoint: str
    #: (stream, consumer, partition, label, record_id, attempts, error, time).
    insert_dead_letter: str
    #: (stream,) -> per dead letter of `stream`, oldest first: consumer, partition, its
    #: label, attempts, error, time, then the record's label, lane_seq and data.
    dead_letters: str
    #: (stream, max_attempts) -> dead letters still being retried (attempts below the
    #: stream's max), oldest first: consumer, partition, label, attempts, error, time,
    #: record_id, and the record's own label.
    retrying_dead_letters: str
    #: (stream, consumer, partition, label, record_id): remove one dead letter.
    delete_dead_letter: str
    # ---------------------------------------------------------------- workflows
    #: (workflow, name) -> (start_label,) of every execution of that name.
    start_labels: str
    #: (id, workflow, name, start_label, label, input, created, updated): a RUNNING execution.
    insert_execution: str
    #: (exec_id, state, input, label, entered): its root frame ('', step 0, running, no retries).
    insert_root_frame: str
    #: (exec_id, frame_id, state, step, input, label, status, output, error, cause, retries,
    #: wait_until, token, entered): insert or overwrite a frame.
    upsert_frame: str
    #: (exec_id, frame_id) -> FRAME_COLUMNS of the frame.
    frame: str
    #: (label, updated, id).
    set_execution_label: str
    #: (status, label, output, error, cause, updated, id).
    finish_execution: str
    #: EXECUTION_COLUMNS of every execution; no WHERE or ORDER BY (executions() adds them).
    executions: str
    #: (exec_id, time, label, frame_id, type, state, detail).
    insert_history_event: str
    #: (exec_id,) -> id, time, label, frame_id, type, state, detail of its events, by id.
    history: str
    #: (token,) -> TOKEN_COLUMNS of the token.
    token: str


class EngineDB(ABC):
    """The durable tables of both engines, behind methods (thread-safe)."""

    #: How often a workflow engine looks for executions nobody runs (seconds), or None when
    #: no other engine can share the database (then only `resume()` at start adopts).
    adopt_interval: float | None = None

    #: The backend's SQL of the steps written once in this class.
    sql: ClassVar[EngineSQL]

    @classmethod
    def open(cls, url: str) -> EngineDB:
        """Open (creating the tables if needed) the engine tables of the store at `url`."""
        return open_engine_db(url)

    @abstractmethod
    def close(self) -> None:
        """Close the connections; every claim of this object ends."""

    # ------------------------------------------------------------------ primitives
    # `conn` and the cursors are the backend's DB-API objects; statements are EngineSQL texts.
    @abstractmethod
    def _read(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        """Run one statement in a transaction of its own; its rows."""

    @abstractmethod
    def _write(self, fence: str | None = None) -> AbstractContextManager[Any]:
        """A write transaction, yielding its connection; with `fence` (a claim key),
        refused with ClaimLost, nothing written, unless this object still holds the claim."""

    @abstractmethod
    def _execute(self, conn: Any, sql: str, params: Sequence[Any]) -> Any:
        """Run one statement in the transaction of `conn`; its cursor."""

    @abstractmethod
    def _execute_many(self, conn: Any, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """Run one statement per parameter row in the transaction of `conn`."""

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

    def lanes(self, stream: str, consumer: str) -> list[Lane]:
        """Every lane of `stream` with records, with `consumer`'s checkpoint of it."""
        return [
            Lane(stream, consumer, p, lab, int(done), int(att), float(nxt), int(newest))
            for p, lab, newest, done, att, nxt in self._read(self.sql.lanes, (consumer, stream))
        ]

    def first_pending(self, stream: str, partition: str, label: str, after: int) -> int | None:
        """The smallest record id of the lane above `after`, or None."""
        (first,) = self._read(self.sql.first_pending, (stream, partition, label, after))[0]
        return None if first is None else int(first)

    def lane_records(self, stream: str, partition: str, label: str, after: int, before: int,
                     limit: int) -> list[StoredRecord]:
        """The lane's records with after < id < before, in order, at most `limit`."""
        rows = self._read(self.sql.lane_records, (stream, partition, label, after, before, limit))
        return [StoredRecord.from_row(row) for row in rows]

    def set_checkpoint(self, lane: Lane, last_id: int, attempts: int, next_at: float,
                       error: str | None = None,
                       dead: list[tuple[int, str, str | None, int]] | None = None) -> None:
        """Move a lane's checkpoint (the writer holds ``lane.claim``, else ClaimLost);
        `dead` = [(record id, label, error, attempts)] to dead-letter in the same
        transaction. A checkpoint never goes backwards: a write with a smaller `last_id`
        than the stored one changes nothing."""
        now = time.time()
        with self._write(lane.claim) as conn:
            cur = self._execute(conn, self.sql.upsert_checkpoint, (
                lane.stream, lane.consumer, lane.partition, lane.label, last_id, attempts,
                next_at, clean_text(error)))
            if cur.rowcount == 0:
                return  # stale: the lane is already past this point
            if dead:
                self._execute_many(conn, self.sql.insert_dead_letter, [
                    (lane.stream, lane.consumer, lane.partition, label, rid, tries,
                     clean_text(err), now)
                    for rid, label, err, tries in dead])

    def retry_dead_letters(self, stream: str, consumer: str, partition: str, label: str,
                           record_ids: list[int], *, attempts: int | None = None,
                           new_label: str | None = None, error: str | None = None) -> None:
        """A detached retry's outcome for its batch, dead-lettered at `label` while it is
        retried: removed (attempts None: the retry succeeded), or rewritten at `new_label`
        with the attempts and error so far, in one transaction."""
        now = time.time()
        error = clean_text(error)
        with self._write() as conn:
            self._execute_many(conn, self.sql.delete_dead_letter, [
                (stream, consumer, partition, label, rid) for rid in record_ids])
            if attempts is not None:
                self._execute_many(conn, self.sql.insert_dead_letter, [
                    (stream, consumer, partition, new_label or label, rid, attempts, error, now)
                    for rid in record_ids])

    def retrying_dead_letter_rows(self, stream: str, max_attempts: int) -> list[tuple[Any, ...]]:
        """See EngineSQL.retrying_dead_letters."""
        return self._read(self.sql.retrying_dead_letters, (stream, max_attempts))

    def stream_rows(self, stream: str, newest_first: bool, limit: int,
                    visible: Callable[[str], bool]) -> list[StoredRecord]:
        """Records of a stream whose label passes `visible`, in global order, at most `limit`."""
        # `visible` is Python (the lattice), so the filter cannot run in SQL: read in order
        # and stop at the limit.
        out: list[StoredRecord] = []
        if limit <= 0:
            return out
        with closing(self._records_in_order(stream, newest_first)) as records:
            for record in records:
                if visible(record.label):
                    out.append(record)
                    if len(out) >= limit:
                        break
        return out

    @abstractmethod
    def _records_in_order(self, stream: str,
                          newest_first: bool) -> Iterator[StoredRecord]:
        """Every record of `stream` by id, read as the caller goes (it may stop early)."""

    def dead_letter_rows(self, stream: str) -> list[tuple[Any, ...]]:
        """(consumer, partition, dl label, attempts, error, time, record label, lane_seq,
        data) per dead letter of `stream`, oldest first."""
        return self._read(self.sql.dead_letters, (stream,))

    # ------------------------------------------------------------------ workflows
    def create_execution(self, exec_id: str, workflow: str, name: str, label: str,
                         input_text: str, visible_clash: Callable[[str], bool],
                         root_state: str) -> bool:
        """Insert a new execution and its root frame unless a clashing one exists.

        `visible_clash(start_label)` says whether an existing execution of the same name
        counts: only those the starter could see, so the answer depends on nothing above the
        starter's label. The check and the insert are atomic against every other starter
        (see :meth:`_serialise_starts`).
        """
        now = time.time()
        with self._write() as conn:
            self._serialise_starts(conn, workflow, name)
            rows = self._execute(conn, self.sql.start_labels, (workflow, name)).fetchall()
            if any(visible_clash(r[0]) for r in rows):
                return False
            self._execute(conn, self.sql.insert_execution,
                          (exec_id, workflow, name, label, label, input_text, now, now))
            self._execute(conn, self.sql.insert_root_frame,
                          (exec_id, root_state, input_text, label, now))
            inp = {"input": loads(input_text)}
            self._insert_events(conn, exec_id, label, "", [("ExecutionStarted", None, inp),
                                                           ("StateEntered", root_state, inp)],
                                now)
        return True

    @abstractmethod
    def _serialise_starts(self, conn: Any, workflow: str, name: str) -> None:
        """Make the transaction of `conn` exclude every other starter of (workflow, name)
        until it ends, before create_execution looks for a clashing execution."""

    def _insert_events(self, conn: Any, exec_id: str, label: str, frame_id: str,
                       events: list[tuple[str, str | None, Any]], now: float) -> None:
        """Append history events (kind, state, detail) in the transaction of `conn`."""
        if not events:
            return
        self._execute_many(conn, self.sql.insert_history_event, [
            (exec_id, now, label, frame_id, kind, state,
             None if detail is None else dumps(detail))
            for kind, state, detail in events])

    def event(self, exec_id: str, label: str, frame_id: str, kind: str, state: str | None,
              detail: Any = None) -> None:
        """Append a history event (claimed: the writer holds the execution's claim)."""
        with self._write(exec_claim(exec_id)) as conn:
            self._insert_events(conn, exec_id, label, frame_id, [(kind, state, detail)],
                                time.time())

    def save_frame(self, exec_id: str, frame_id: str, *, state: str, step: int,
                   input_text: str, label: str, status: str, retries: dict[str, int],
                   output_text: str | None = None, error: str | None = None,
                   cause: str | None = None, wait_until: float | None = None,
                   token: str | None = None,
                   events: list[tuple[str, str | None, Any]] | None = None,
                   label_of_events: str | None = None, root: bool = False) -> None:
        """Persist one frame transition with its history events, atomically (claimed)."""
        now = time.time()
        with self._write(exec_claim(exec_id)) as conn:
            self._execute(conn, self.sql.upsert_frame, (
                exec_id, frame_id, state, step, input_text, label, status, output_text,
                clean_text(error), clean_text(cause), dumps(retries), wait_until, token, now))
            if root:
                # The execution row's label is that of its root frame: it guards the status
                # fields a viewer may see.
                self._execute(conn, self.sql.set_execution_label, (label, now, exec_id))
            self._insert_events(conn, exec_id, label_of_events or label, frame_id, events or [],
                                now)

    def frame(self, exec_id: str, frame_id: str) -> dict[str, Any] | None:
        """A frame's row: state, step, input, label, status, output, error, cause, retries
        (decoded), wait_until, token, entered."""
        rows = self._read(self.sql.frame, (exec_id, frame_id))
        if not rows:
            return None
        out = dict(zip(FRAME_COLUMNS, rows[0], strict=True))
        out["step"] = int(out["step"])
        out["retries"] = loads(out["retries"])
        return out

    def finish_execution(self, exec_id: str, status: str, label: str,
                         output_text: str | None, error: str | None,
                         cause: str | None) -> None:
        """Record the end of an execution and its history event (claimed)."""
        now = time.time()
        error, cause = clean_text(error), clean_text(cause)
        kind = {"SUCCEEDED": "ExecutionSucceeded", "FAILED": "ExecutionFailed"}.get(
            status, "Execution" + status.title())
        detail: dict[str, Any] = {"output": loads(output_text)} if status == "SUCCEEDED" \
            else {"error": error, "cause": cause}
        with self._write(exec_claim(exec_id)) as conn:
            self._execute(conn, self.sql.finish_execution,
                          (status, label, output_text, error, cause, now, exec_id))
            self._insert_events(conn, exec_id, label, "", [(kind, None, detail)], now)

    def set_execution_label(self, exec_id: str, label: str) -> None:
        """Set the label guarding an execution's status fields (claimed)."""
        with self._write(exec_claim(exec_id)) as conn:
            self._execute(conn, self.sql.set_execution_label, (label, time.time(), exec_id))

    def executions(self, *, workflow: str | None = None, status: str | None = None,
                   exec_id: str | None = None, name: str | None = None
                   ) -> list[dict[str, Any]]:
        """Execution rows matching every given filter, oldest first."""
        where, params = [], []
        # Column names from this fixed list only; the values are bound.
        for col, val in (("workflow", workflow), ("status", status), ("id", exec_id),
                         ("name", name)):
            if val is not None:
                where.append(f"{col} = {self.sql.param}")
                params.append(val)
        return self._executions(" AND ".join(where), params)

    def _executions(self, where: str, params: list[Any]) -> list[dict[str, Any]]:
        """Execution rows meeting the SQL condition `where` (none when empty), oldest first."""
        sql = self.sql.executions
        if where:
            sql += " WHERE " + where
        sql += " ORDER BY created, id"
        return [dict(zip(EXECUTION_COLUMNS, row, strict=True))
                for row in self._read(sql, params)]

    def history(self, exec_id: str) -> list[dict[str, Any]]:
        """An execution's history events in order (each with its label)."""
        return [{"id": int(i), "time": t, "label": lab, "frame": f, "type": k, "state": s,
                 "detail": loads(d)}
                for i, t, lab, f, k, s, d in self._read(self.sql.history, (exec_id,))]

    @abstractmethod
    def new_token(self, token: str, exec_id: str, frame_id: str, label: str,
                  activity: str | None, input_text: str) -> None:
        """Create a pending task token (a second create of the same token is ignored)."""

    def token(self, token: str) -> dict[str, Any] | None:
        """A token's row, or None."""
        rows = self._read(self.sql.token, (token,))
        return dict(zip(TOKEN_COLUMNS, rows[0], strict=True)) if rows else None

    def settle_token(self, token: str, status: str, output_text: str | None,
                     error: str | None, cause: str | None) -> bool:
        """Close a pending/claimed token; False when it was already closed (first wins)."""
        return self._settle_token(token, status, output_text, clean_text(error),
                                  clean_text(cause))

    @abstractmethod
    def _settle_token(self, token: str, status: str, output_text: str | None,
                      error: str | None, cause: str | None) -> bool:
        """settle_token, its texts fit for the backend."""

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
