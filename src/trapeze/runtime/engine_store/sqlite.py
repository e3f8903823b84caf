"""The engine tables in SQLite (trusted): one engine process per store file.

The engines keep their own tables in the same SQLite file as the faceted store, through their
own per-thread connections: WAL lets several connections share the file, every multi-statement
write runs under ``BEGIN IMMEDIATE`` (so it never has to upgrade a read snapshot, which fails
without waiting in WAL mode), and the busy timeout makes writers queue instead of failing.
SQLite serialises every write, so a lane's record ids and its per-(stream, label) numbers are
handed out in commit order without anything more.

Claims (see ``base.py``) are kept in this object's memory: the embedded setup runs one engine
process per file (the CLI only reads, or appends records), and a new engine after a crash or
``stop()`` opens a new object and so holds no stale claim. Two engine *processes* on one file
would not exclude each other; several machines are what the PostgreSQL backend is for.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import Any

from trapeze.runtime.engine_store.base import (
    ClaimLost,
    EngineDB,
    Lane,
    StoredRecord,
    dumps,
    exec_claim,
    loads,
)
from trapeze.store.sqlite import SqliteConfig, _Connections, parse_sqlite_url

_SCHEMA = """
CREATE TABLE IF NOT EXISTS trapeze_stream_records (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,  -- global order, never shown to anyone
    stream    TEXT NOT NULL,
    partition TEXT NOT NULL,
    label     TEXT NOT NULL,
    lane_seq  INTEGER NOT NULL,                   -- per (stream, label): the visible number
    data      TEXT NOT NULL,
    arrived   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS trapeze_stream_records_lane
    ON trapeze_stream_records (stream, partition, label, id);
CREATE INDEX IF NOT EXISTS trapeze_stream_records_stream
    ON trapeze_stream_records (stream, id);
CREATE TABLE IF NOT EXISTS trapeze_stream_counters (
    stream TEXT NOT NULL, label TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (stream, label)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS trapeze_stream_lanes (
    stream TEXT NOT NULL, partition TEXT NOT NULL, label TEXT NOT NULL,
    last_id INTEGER NOT NULL,
    PRIMARY KEY (stream, partition, label)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS trapeze_stream_checkpoints (
    stream TEXT NOT NULL, consumer TEXT NOT NULL, partition TEXT NOT NULL, label TEXT NOT NULL,
    last_id INTEGER NOT NULL, attempts INTEGER NOT NULL, next_at REAL NOT NULL,
    last_error TEXT,
    PRIMARY KEY (stream, consumer, partition, label)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS trapeze_stream_dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL, consumer TEXT NOT NULL, partition TEXT NOT NULL,
    label TEXT NOT NULL,          -- the label the failure is known at (batch or raised label)
    record_id INTEGER NOT NULL, attempts INTEGER NOT NULL, error TEXT, time REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS trapeze_wf_executions (
    id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL, name TEXT NOT NULL,
    start_label TEXT NOT NULL,    -- decides who sees the entry at all
    label TEXT NOT NULL,          -- the label of the status/output fields below
    status TEXT NOT NULL,
    input TEXT NOT NULL, output TEXT, error TEXT, cause TEXT,
    created REAL NOT NULL, updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS trapeze_wf_executions_name
    ON trapeze_wf_executions (workflow, name);
CREATE INDEX IF NOT EXISTS trapeze_wf_executions_status
    ON trapeze_wf_executions (status);
CREATE TABLE IF NOT EXISTS trapeze_wf_frames (
    exec_id TEXT NOT NULL, frame_id TEXT NOT NULL,
    state TEXT NOT NULL, step INTEGER NOT NULL,
    input TEXT NOT NULL, label TEXT NOT NULL, status TEXT NOT NULL,
    output TEXT, error TEXT, cause TEXT,
    retries TEXT NOT NULL, wait_until REAL, token TEXT, entered REAL NOT NULL,
    PRIMARY KEY (exec_id, frame_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS trapeze_wf_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    exec_id TEXT NOT NULL, time REAL NOT NULL, label TEXT NOT NULL, frame_id TEXT NOT NULL,
    type TEXT NOT NULL, state TEXT, detail TEXT
);
CREATE INDEX IF NOT EXISTS trapeze_wf_history_exec ON trapeze_wf_history (exec_id, id);
CREATE TABLE IF NOT EXISTS trapeze_wf_tokens (
    token TEXT PRIMARY KEY,
    exec_id TEXT NOT NULL, frame_id TEXT NOT NULL, label TEXT NOT NULL,
    activity TEXT, input TEXT NOT NULL,
    status TEXT NOT NULL,          -- pending | claimed | succeeded | failed | timedout
    output TEXT, error TEXT, cause TEXT, created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS trapeze_wf_tokens_activity
    ON trapeze_wf_tokens (activity, status, created);
"""


class SqliteEngineDB(EngineDB):
    """The SQL of both engines on SQLite (one connection per thread)."""

    def __init__(self, config: SqliteConfig) -> None:
        self._conns = _Connections(config, lambda conn: None)
        self._claims: set[str] = set()
        self._claims_lock = threading.Lock()
        # Autocommit DDL: each CREATE ... IF NOT EXISTS takes the write lock on its own, so
        # two processes opening the same file at once both end up with the same schema.
        self._conn().executescript(_SCHEMA)

    @classmethod
    def from_url(cls, url: str) -> SqliteEngineDB:
        return cls(parse_sqlite_url(url))

    def close(self) -> None:
        with self._claims_lock:
            self._claims.clear()
        self._conns.close()

    def _conn(self) -> sqlite3.Connection:
        return self._conns.get()

    # ------------------------------------------------------------------ claims
    def claim(self, key: str) -> bool:
        with self._claims_lock:
            if key in self._claims:
                return False
            self._claims.add(key)
            return True

    def release(self, key: str) -> None:
        with self._claims_lock:
            self._claims.discard(key)

    def claim_running_executions(self, exclude: Collection[str]) -> list[dict[str, Any]]:
        skip = set(exclude)
        return [row for row in self.executions(status="RUNNING")
                if row["id"] not in skip and self.claim(exec_claim(row["id"]))]

    def _fence(self, key: str) -> None:
        with self._claims_lock:
            if key not in self._claims:
                raise ClaimLost(f"not holding the claim {key}")

    @contextmanager
    def write(self, fence: str | None = None) -> Iterator[sqlite3.Connection]:
        """A write transaction; with `fence`, refused (ClaimLost) unless the claim is held."""
        if fence is not None:
            self._fence(fence)
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return self._conn().execute(sql, params).fetchall()

    # ================================================================== streams
    def append_record(self, stream: str, partition: str, label: str, data: str,
                      now: float) -> tuple[int, int]:
        with self.write() as conn:
            # The visible number counts only records of the same label, so what a viewer sees
            # never depends on how many records other labels put in between.
            conn.execute(
                "INSERT INTO trapeze_stream_counters (stream, label, n) VALUES (?, ?, 1) "
                "ON CONFLICT (stream, label) DO UPDATE SET n = n + 1",
                (stream, label),
            )
            (n,) = conn.execute(
                "SELECT n FROM trapeze_stream_counters WHERE stream = ? AND label = ?",
                (stream, label),
            ).fetchone()
            cur = conn.execute(
                "INSERT INTO trapeze_stream_records (stream, partition, label, lane_seq, data,"
                " arrived) VALUES (?, ?, ?, ?, ?, ?)",
                (stream, partition, label, n, data, now),
            )
            rid = int(cur.lastrowid or 0)
            conn.execute(
                "INSERT INTO trapeze_stream_lanes (stream, partition, label, last_id) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (stream, partition, label) "
                "DO UPDATE SET last_id = excluded.last_id",
                (stream, partition, label, rid),
            )
        return rid, int(n)

    def lanes(self, stream: str, consumer: str) -> list[Lane]:
        rows = self.read(
            "SELECT l.partition, l.label, l.last_id, COALESCE(c.last_id, 0),"
            " COALESCE(c.attempts, 0), COALESCE(c.next_at, 0) "
            "FROM trapeze_stream_lanes l LEFT JOIN trapeze_stream_checkpoints c "
            "ON c.stream = l.stream AND c.consumer = ? AND c.partition = l.partition"
            " AND c.label = l.label WHERE l.stream = ?",
            (consumer, stream),
        )
        return [
            Lane(stream, consumer, p, lab, int(done), int(att), float(nxt), int(newest))
            for p, lab, newest, done, att, nxt in rows
        ]

    def first_pending(self, stream: str, partition: str, label: str, after: int) -> int | None:
        row = self.read(
            "SELECT MIN(id) FROM trapeze_stream_records WHERE stream = ? AND partition = ?"
            " AND label = ? AND id > ?",
            (stream, partition, label, after),
        )[0]
        return None if row[0] is None else int(row[0])

    def lane_records(self, stream: str, partition: str, label: str, after: int, before: int,
                     limit: int) -> list[StoredRecord]:
        rows = self.read(
            "SELECT id, partition, label, lane_seq, data, arrived FROM trapeze_stream_records "
            "WHERE stream = ? AND partition = ? AND label = ? AND id > ? AND id < ? "
            "ORDER BY id LIMIT ?",
            (stream, partition, label, after, before, limit),
        )
        return [StoredRecord(int(a), b, c, int(d), e, float(f)) for a, b, c, d, e, f in rows]

    def set_checkpoint(self, lane: Lane, last_id: int, attempts: int, next_at: float,
                       error: str | None = None,
                       dead: list[tuple[int, str, str | None, int]] | None = None) -> None:
        now = time.time()
        with self.write(lane.claim) as conn:
            cur = conn.execute(
                "INSERT INTO trapeze_stream_checkpoints (stream, consumer, partition, label,"
                " last_id, attempts, next_at, last_error) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (stream, consumer, partition, label) DO UPDATE SET"
                " last_id = excluded.last_id, attempts = excluded.attempts,"
                " next_at = excluded.next_at, last_error = excluded.last_error"
                " WHERE trapeze_stream_checkpoints.last_id <= excluded.last_id",
                (lane.stream, lane.consumer, lane.partition, lane.label, last_id, attempts,
                 next_at, error),
            )
            if cur.rowcount == 0:
                return  # stale: the lane is already past this point
            for rid, label, err, tries in dead or []:
                conn.execute(
                    "INSERT INTO trapeze_stream_dead_letters (stream, consumer, partition, label,"
                    " record_id, attempts, error, time) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (lane.stream, lane.consumer, lane.partition, label, rid, tries, err,
                     now),
                )

    def add_dead_letters(self, stream: str, consumer: str, partition: str, label: str,
                         record_ids: list[int], attempts: int, error: str | None) -> None:
        now = time.time()
        with self.write() as conn:
            conn.executemany(
                "INSERT INTO trapeze_stream_dead_letters (stream, consumer, partition, label,"
                " record_id, attempts, error, time) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(stream, consumer, partition, label, rid, attempts, error, now)
                 for rid in record_ids],
            )

    def stream_rows(self, stream: str, newest_first: bool, limit: int,
                    visible: Callable[[str], bool]) -> list[StoredRecord]:
        """Records of a stream whose label passes `visible`, in global order."""
        order = "DESC" if newest_first else "ASC"
        out: list[StoredRecord] = []
        cur = self._conn().execute(
            "SELECT id, partition, label, lane_seq, data, arrived FROM trapeze_stream_records"
            f" WHERE stream = ? ORDER BY id {order}",
            (stream,),
        )
        for a, b, c, d, e, f in cur:
            if visible(c):
                out.append(StoredRecord(int(a), b, c, int(d), e, float(f)))
                if len(out) >= limit:
                    break
        cur.close()
        return out

    def dead_letter_rows(self, stream: str) -> list[tuple[Any, ...]]:
        return self.read(
            "SELECT d.consumer, d.partition, d.label, d.attempts, d.error, d.time, r.label,"
            " r.lane_seq, r.data FROM trapeze_stream_dead_letters d"
            " JOIN trapeze_stream_records r ON r.id = d.record_id"
            " WHERE d.stream = ? ORDER BY d.id",
            (stream,),
        )

    # ================================================================== workflows
    def create_execution(self, exec_id: str, workflow: str, name: str, label: str,
                         input_text: str, visible_clash: Callable[[str], bool],
                         root_state: str) -> bool:
        """Insert a new execution and its root frame unless a clashing one exists.

        `visible_clash(start_label)` says whether an existing execution of the same name
        counts: only those the starter could see, so the answer depends on nothing above the
        starter's label. Check and insert share one write transaction.
        """
        now = time.time()
        with self.write() as conn:
            rows = conn.execute(
                "SELECT start_label FROM trapeze_wf_executions WHERE workflow = ? AND name = ?",
                (workflow, name),
            ).fetchall()
            if any(visible_clash(r[0]) for r in rows):
                return False
            conn.execute(
                "INSERT INTO trapeze_wf_executions (id, workflow, name, start_label, label,"
                " status, input, created, updated) VALUES (?, ?, ?, ?, ?, 'RUNNING', ?, ?, ?)",
                (exec_id, workflow, name, label, label, input_text, now, now),
            )
            conn.execute(
                "INSERT INTO trapeze_wf_frames (exec_id, frame_id, state, step, input, label,"
                " status, retries, entered) VALUES (?, '', ?, 0, ?, ?, 'running', '{}', ?)",
                (exec_id, root_state, input_text, label, now),
            )
            self._event(conn, exec_id, label, "", "ExecutionStarted", None,
                        {"input": loads(input_text)}, now)
            self._event(conn, exec_id, label, "", "StateEntered", root_state,
                        {"input": loads(input_text)}, now)
        return True

    @staticmethod
    def _event(conn: sqlite3.Connection, exec_id: str, label: str, frame_id: str, kind: str,
               state: str | None, detail: Any, now: float) -> None:
        conn.execute(
            "INSERT INTO trapeze_wf_history (exec_id, time, label, frame_id, type, state, detail)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (exec_id, now, label, frame_id, kind, state,
             None if detail is None else dumps(detail)),
        )

    def event(self, exec_id: str, label: str, frame_id: str, kind: str, state: str | None,
              detail: Any = None) -> None:
        with self.write(exec_claim(exec_id)) as conn:
            self._event(conn, exec_id, label, frame_id, kind, state, detail, time.time())

    def save_frame(self, exec_id: str, frame_id: str, *, state: str, step: int, input_text: str,
                   label: str, status: str, retries: dict[str, int],
                   output_text: str | None = None, error: str | None = None,
                   cause: str | None = None, wait_until: float | None = None,
                   token: str | None = None,
                   events: list[tuple[str, str | None, Any]] | None = None,
                   label_of_events: str | None = None, root: bool = False) -> None:
        """Persist one frame transition together with its history events, atomically."""
        now = time.time()
        with self.write(exec_claim(exec_id)) as conn:
            conn.execute(
                "INSERT INTO trapeze_wf_frames (exec_id, frame_id, state, step, input, label,"
                " status, output, error, cause, retries, wait_until, token, entered)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (exec_id, frame_id) DO UPDATE SET state = excluded.state,"
                " step = excluded.step, input = excluded.input, label = excluded.label,"
                " status = excluded.status, output = excluded.output, error = excluded.error,"
                " cause = excluded.cause, retries = excluded.retries,"
                " wait_until = excluded.wait_until, token = excluded.token,"
                " entered = excluded.entered",
                (exec_id, frame_id, state, step, input_text, label, status, output_text, error,
                 cause, dumps(retries), wait_until, token, now),
            )
            if root:
                # The execution row's label is that of its root frame: it guards the status
                # fields a viewer may see.
                conn.execute("UPDATE trapeze_wf_executions SET label = ?, updated = ?"
                             " WHERE id = ?", (label, now, exec_id))
            for kind, st, detail in events or []:
                self._event(conn, exec_id, label_of_events or label, frame_id, kind, st, detail,
                            now)

    def frame(self, exec_id: str, frame_id: str) -> dict[str, Any] | None:
        rows = self.read(
            "SELECT state, step, input, label, status, output, error, cause, retries,"
            " wait_until, token, entered FROM trapeze_wf_frames"
            " WHERE exec_id = ? AND frame_id = ?",
            (exec_id, frame_id),
        )
        if not rows:
            return None
        (state, step, inp, label, status, out, err, cause, retries, wait_until, token,
         entered) = rows[0]
        return {"state": state, "step": int(step), "input": inp, "label": label,
                "status": status, "output": out, "error": err, "cause": cause,
                "retries": loads(retries), "wait_until": wait_until, "token": token,
                "entered": entered}

    def finish_execution(self, exec_id: str, status: str, label: str, output_text: str | None,
                         error: str | None, cause: str | None) -> None:
        now = time.time()
        kind = {"SUCCEEDED": "ExecutionSucceeded", "FAILED": "ExecutionFailed"}.get(
            status, "Execution" + status.title())
        with self.write(exec_claim(exec_id)) as conn:
            conn.execute(
                "UPDATE trapeze_wf_executions SET status = ?, label = ?, output = ?, error = ?,"
                " cause = ?, updated = ? WHERE id = ?",
                (status, label, output_text, error, cause, now, exec_id),
            )
            detail: dict[str, Any] = {"output": loads(output_text)} if status == "SUCCEEDED" \
                else {"error": error, "cause": cause}
            self._event(conn, exec_id, label, "", kind, None, detail, now)

    def set_execution_label(self, exec_id: str, label: str) -> None:
        with self.write(exec_claim(exec_id)) as conn:
            conn.execute("UPDATE trapeze_wf_executions SET label = ?, updated = ? WHERE id = ?",
                         (label, time.time(), exec_id))

    def executions(self, *, workflow: str | None = None, status: str | None = None,
                   exec_id: str | None = None, name: str | None = None
                   ) -> list[dict[str, Any]]:
        where, params = [], []
        for col, val in (("workflow", workflow), ("status", status), ("id", exec_id),
                         ("name", name)):
            if val is not None:
                where.append(f"{col} = ?")
                params.append(val)
        sql = ("SELECT id, workflow, name, start_label, label, status, input, output, error,"
               " cause, created, updated FROM trapeze_wf_executions")
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created, id"
        keys = ("id", "workflow", "name", "start_label", "label", "status", "input", "output",
                "error", "cause", "created", "updated")
        return [dict(zip(keys, row, strict=True)) for row in self.read(sql, tuple(params))]

    def history(self, exec_id: str) -> list[dict[str, Any]]:
        rows = self.read(
            "SELECT id, time, label, frame_id, type, state, detail FROM trapeze_wf_history"
            " WHERE exec_id = ? ORDER BY id",
            (exec_id,),
        )
        return [{"id": i, "time": t, "label": lab, "frame": f, "type": k, "state": s,
                 "detail": loads(d)} for i, t, lab, f, k, s, d in rows]

    # ------------------------------------------------------------------ task tokens
    def new_token(self, token: str, exec_id: str, frame_id: str, label: str,
                  activity: str | None, input_text: str) -> None:
        with self.write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO trapeze_wf_tokens (token, exec_id, frame_id, label,"
                " activity, input, status, created) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?)",
                (token, exec_id, frame_id, label, activity, input_text, time.time()),
            )

    def token(self, token: str) -> dict[str, Any] | None:
        rows = self.read(
            "SELECT exec_id, frame_id, label, activity, input, status, output, error, cause"
            " FROM trapeze_wf_tokens WHERE token = ?",
            (token,),
        )
        if not rows:
            return None
        keys = ("exec_id", "frame_id", "label", "activity", "input", "status", "output",
                "error", "cause")
        return dict(zip(keys, rows[0], strict=True))

    def settle_token(self, token: str, status: str, output_text: str | None,
                     error: str | None, cause: str | None) -> bool:
        """Close a pending/claimed token; False when it was already closed (first one wins)."""
        with self.write() as conn:
            cur = conn.execute(
                "UPDATE trapeze_wf_tokens SET status = ?, output = ?, error = ?, cause = ?"
                " WHERE token = ? AND status IN ('pending', 'claimed')",
                (status, output_text, error, cause, token),
            )
            return cur.rowcount == 1

    def claim_activity_task(self, activity: str, label: str,
                            exec_id: str | None) -> tuple[str, str] | None:
        """Hand out the oldest pending task of `activity` at exactly `label`."""
        with self.write() as conn:
            sql = ("SELECT token, input FROM trapeze_wf_tokens WHERE activity = ? AND"
                   " status = 'pending' AND label = ?")
            params: tuple[Any, ...] = (activity, label)
            if exec_id is not None:
                sql += " AND exec_id = ?"
                params += (exec_id,)
            row = conn.execute(sql + " ORDER BY created LIMIT 1", params).fetchone()
            if row is None:
                return None
            conn.execute("UPDATE trapeze_wf_tokens SET status = 'claimed' WHERE token = ?",
                         (row[0],))
            return str(row[0]), str(row[1])
