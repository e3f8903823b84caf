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
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from trapeze.runtime.engine_store.base import (
    EXECUTION_COLUMNS,
    FRAME_COLUMNS,
    RECORD_COLUMNS,
    TOKEN_COLUMNS,
    ClaimLost,
    EngineDB,
    EngineSQL,
    StoredRecord,
    exec_claim,
)
from trapeze.store.sqlite import SqliteConfig, _Connections, parse_sqlite_url
from trapeze.store.sqlite_writer import WriterLock

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


_SQL = EngineSQL(
    param="?",
    lanes=(
        "SELECT l.partition, l.label, l.last_id, COALESCE(c.last_id, 0),"
        " COALESCE(c.attempts, 0), COALESCE(c.next_at, 0) "
        "FROM trapeze_stream_lanes l LEFT JOIN trapeze_stream_checkpoints c "
        "ON c.stream = l.stream AND c.consumer = ? AND c.partition = l.partition"
        " AND c.label = l.label WHERE l.stream = ?"
    ),
    first_pending=(
        "SELECT MIN(id) FROM trapeze_stream_records WHERE stream = ? AND partition = ?"
        " AND label = ? AND id > ?"
    ),
    lane_records=(
        f"SELECT {RECORD_COLUMNS} FROM trapeze_stream_records "
        "WHERE stream = ? AND partition = ? AND label = ? AND id > ? AND id < ? "
        "ORDER BY id LIMIT ?"
    ),
    upsert_checkpoint=(
        "INSERT INTO trapeze_stream_checkpoints (stream, consumer, partition, label,"
        " last_id, attempts, next_at, last_error) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (stream, consumer, partition, label) DO UPDATE SET"
        " last_id = excluded.last_id, attempts = excluded.attempts,"
        " next_at = excluded.next_at, last_error = excluded.last_error"
        " WHERE trapeze_stream_checkpoints.last_id <= excluded.last_id"
    ),
    insert_dead_letter=(
        "INSERT INTO trapeze_stream_dead_letters (stream, consumer, partition, label,"
        " record_id, attempts, error, time) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    ),
    dead_letters=(
        "SELECT d.consumer, d.partition, d.label, d.attempts, d.error, d.time, r.label,"
        " r.lane_seq, r.data FROM trapeze_stream_dead_letters d"
        " JOIN trapeze_stream_records r ON r.id = d.record_id"
        " WHERE d.stream = ? ORDER BY d.id"
    ),
    retrying_dead_letters=(
        "SELECT d.consumer, d.partition, d.label, d.attempts, d.error, d.time, d.record_id,"
        " r.label FROM trapeze_stream_dead_letters d"
        " JOIN trapeze_stream_records r ON r.id = d.record_id"
        " WHERE d.stream = ? AND d.attempts < ? ORDER BY d.id"
    ),
    delete_dead_letter=(
        "DELETE FROM trapeze_stream_dead_letters WHERE stream = ? AND consumer = ?"
        " AND partition = ? AND label = ? AND record_id = ?"
    ),
    start_labels="SELECT start_label FROM trapeze_wf_executions WHERE workflow = ? AND name = ?",
    insert_execution=(
        "INSERT INTO trapeze_wf_executions (id, workflow, name, start_label, label,"
        " status, input, created, updated) VALUES (?, ?, ?, ?, ?, 'RUNNING', ?, ?, ?)"
    ),
    insert_root_frame=(
        "INSERT INTO trapeze_wf_frames (exec_id, frame_id, state, step, input, label,"
        " status, retries, entered) VALUES (?, '', ?, 0, ?, ?, 'running', '{}', ?)"
    ),
    upsert_frame=(
        "INSERT INTO trapeze_wf_frames (exec_id, frame_id, state, step, input, label,"
        " status, output, error, cause, retries, wait_until, token, entered)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (exec_id, frame_id) DO UPDATE SET state = excluded.state,"
        " step = excluded.step, input = excluded.input, label = excluded.label,"
        " status = excluded.status, output = excluded.output, error = excluded.error,"
        " cause = excluded.cause, retries = excluded.retries,"
        " wait_until = excluded.wait_until, token = excluded.token,"
        " entered = excluded.entered"
    ),
    frame=(
        f"SELECT {', '.join(FRAME_COLUMNS)} FROM trapeze_wf_frames"
        " WHERE exec_id = ? AND frame_id = ?"
    ),
    set_execution_label="UPDATE trapeze_wf_executions SET label = ?, updated = ? WHERE id = ?",
    finish_execution=(
        "UPDATE trapeze_wf_executions SET status = ?, label = ?, output = ?, error = ?,"
        " cause = ?, updated = ? WHERE id = ?"
    ),
    executions=f"SELECT {', '.join(EXECUTION_COLUMNS)} FROM trapeze_wf_executions",
    insert_history_event=(
        "INSERT INTO trapeze_wf_history (exec_id, time, label, frame_id, type, state, detail)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)"
    ),
    history=(
        "SELECT id, time, label, frame_id, type, state, detail FROM trapeze_wf_history"
        " WHERE exec_id = ? ORDER BY id"
    ),
    token=f"SELECT {', '.join(TOKEN_COLUMNS)} FROM trapeze_wf_tokens WHERE token = ?",
)


class SqliteEngineDB(EngineDB):
    """The engine tables on SQLite (one connection per thread, claims in memory)."""

    sql = _SQL

    def __init__(self, config: SqliteConfig) -> None:
        self._conns = _Connections(config, lambda conn: None)
        self._writer = WriterLock(config.path, config.busy_timeout_ms / 1000)
        self._claims: set[str] = set()
        self._claims_lock = threading.Lock()
        # Autocommit DDL: each CREATE ... IF NOT EXISTS takes the write lock on its own, so
        # two processes opening the same file at once both end up with the same schema.
        with self._writer:
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

    # ------------------------------------------------------------------ primitives
    def _fence(self, key: str) -> None:
        with self._claims_lock:
            if key not in self._claims:
                raise ClaimLost(f"not holding the claim {key}")

    @contextmanager
    def _write(self, fence: str | None = None) -> Iterator[sqlite3.Connection]:
        if fence is not None:
            self._fence(fence)
        with self._writer.transaction(self._conn()) as conn:
            yield conn

    def _read(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        return self._conn().execute(sql, params).fetchall()

    def _execute(self, conn: sqlite3.Connection, sql: str,
                 params: Sequence[Any]) -> sqlite3.Cursor:
        return conn.execute(sql, params)

    def _execute_many(self, conn: sqlite3.Connection, sql: str,
                      rows: list[tuple[Any, ...]]) -> None:
        conn.executemany(sql, rows)

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

    # ================================================================== streams
    def append_record(self, stream: str, partition: str, label: str, data: str,
                      now: float) -> tuple[int, int]:
        with self._write() as conn:
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

    def _records_in_order(self, stream: str, newest_first: bool) -> Iterator[StoredRecord]:
        # One cursor, read as the caller goes; closed when the caller stops.
        order = "DESC" if newest_first else "ASC"
        cur = self._conn().execute(
            f"SELECT {RECORD_COLUMNS} FROM trapeze_stream_records"
            f" WHERE stream = ? ORDER BY id {order}",
            (stream,),
        )
        try:
            for row in cur:
                yield StoredRecord.from_row(row)
        finally:
            cur.close()

    # ================================================================== workflows
    def _serialise_starts(self, conn: sqlite3.Connection, workflow: str, name: str) -> None:
        pass  # BEGIN IMMEDIATE (_write) already holds the file's one write lock

    # ------------------------------------------------------------------ task tokens
    def new_token(self, token: str, exec_id: str, frame_id: str, label: str,
                  activity: str | None, input_text: str) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO trapeze_wf_tokens (token, exec_id, frame_id, label,"
                " activity, input, status, created) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?)",
                (token, exec_id, frame_id, label, activity, input_text, time.time()),
            )

    def _settle_token(self, token: str, status: str, output_text: str | None,
                      error: str | None, cause: str | None) -> bool:
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE trapeze_wf_tokens SET status = ?, output = ?, error = ?, cause = ?"
                " WHERE token = ? AND status IN ('pending', 'claimed')",
                (status, output_text, error, cause, token),
            )
            return cur.rowcount == 1

    def claim_activity_task(self, activity: str, label: str,
                            exec_id: str | None) -> tuple[str, str] | None:
        # Select and update in one write transaction: no other writer comes in between.
        with self._write() as conn:
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
