"""The engine tables in PostgreSQL (trusted): several engines, on several machines, one database.

Same tables and columns as the SQLite backend (labels an out-of-band column of every row), in
the store URL's schema next to the faceted store's tables, created and versioned by the
store's own schema code (component ``engine`` in ``trapeze_schema``; a newer version is
refused). Connections come from a psycopg pool, as in the store, plus one dedicated
connection per :class:`PostgresEngineDB` that holds its claims.

Isolation level: READ COMMITTED, forced on every connection (``trapeze.store.postgres``).
Where a write depends on what it read, it takes an explicit lock first; every statement then
sees all commits made before the lock was granted. SERIALIZABLE would give the same outcomes
only by aborting one of two conflicting transactions, and every writer would need a retry
loop; with the locks below, conflicting writers wait a moment instead, and nothing aborts.

Locks, operation by operation:

* ``append_record`` is one statement. Its upsert of the (stream, label) counter row takes that
  row's lock, held until commit, *before* the record's id is drawn from the identity
  sequence. So appends of one (stream, label), hence of one lane, draw their ids and commit
  one after another: a lane's ids become visible in increasing order (a checkpoint reads
  "every id <= n is done" and must never skip a record that committed late), and the
  per-(stream, label) number, the counter's new value returned by the same upsert, is never
  handed out twice. Appends at other labels or to other streams do not wait for each other.
* Claims of lanes and executions are session-level advisory locks
  (``pg_try_advisory_lock`` on a 64-bit hash of the schema and the claim key) held by the
  dedicated claim connection. Not row locks in an open transaction: a delivery or an
  execution lasts as long as its function calls (an execution waiting for a callback can
  last days), and a transaction that long would hold back vacuum and tie up a connection per
  claim. A session lock costs one entry of the server's lock table while held and ends with
  the session: when the process dies or its connection breaks, the server drops its locks,
  and another engine takes the work over on its next look (a stream scheduler pass, a
  workflow engine's adoption every ``adopt_interval``). The claim session sets TCP
  keepalives (about 25 s) so that the server notices a machine that vanished without
  closing its connection. A hash collision between two keys only makes them exclude each
  other (one waits for the other), and the 64-bit form (objsubid 1) never meets the
  store's per-key locks (the two-int form, objsubid 2). Any error on the claim connection
  closes it, dropping all of its claims: its set of claims is then exactly what this object
  believes it holds, or nothing.
* Fencing. Every write that moves claimed state (a checkpoint, a frame, history, an
  execution's status) first checks, inside its transaction, that ``pg_locks`` shows the
  claim granted to this object's claim session, and raises ClaimLost otherwise, writing
  nothing. A lost claim (a broken connection) can thus never let a stale engine overwrite
  the new holder's progress. (If the session dies between that check and the commit, the
  new holder may redo the step just recorded: at-least-once, as after a crash.) On top,
  a checkpoint never goes backwards: its upsert applies only when ``last_id`` does not
  decrease.
* Activity tasks: one ``UPDATE ... WHERE token = (SELECT ... FOR UPDATE SKIP LOCKED LIMIT
  1)``: concurrent workers, on any machine, each lock a different pending task without
  waiting, and the re-check after locking (READ COMMITTED re-evaluates the condition on the
  newest row version) skips a task claimed meanwhile. Settling a token is one ``UPDATE ...
  WHERE status IN ('pending', 'claimed')``: the row lock and the same re-check make the
  first completion win.
* Starting an execution takes a transaction-scoped advisory lock on (workflow, name), so
  that the check for a visible execution of that name and the insert are atomic against
  every other starter (a row that does not exist yet cannot be locked).
* An execution's frames are written only by its claim holder; the branches of a Parallel,
  threads of that holder, write different frame rows.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg

from trapeze.runtime.engine_store.base import (
    EXEC_CLAIM_PREFIX,
    EXECUTION_COLUMNS,
    FRAME_COLUMNS,
    RECORD_COLUMNS,
    TOKEN_COLUMNS,
    ClaimLost,
    EngineDB,
    EngineSQL,
    StoredRecord,
    dumps,
    exec_claim,
)
from trapeze.store.postgres import (
    PostgresConfig,
    StoreUnavailableError,
    _configure,
    _connect_error,
    _ensure_schema,
    _Pool,
    _q,
    parse_postgres_url,
)
from trapeze.store.sqlite import StoreClosedError

ENGINE_SCHEMA_VERSIONS = {"engine": 1}

_ENGINE_DDL = [
    """CREATE TABLE {s}.trapeze_stream_records (
        id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- internal order
        stream    text NOT NULL,
        partition text NOT NULL,
        label     text NOT NULL,
        lane_seq  bigint NOT NULL,          -- per (stream, label): the visible number
        data      text NOT NULL,
        arrived   double precision NOT NULL
    )""",
    "CREATE INDEX trapeze_stream_records_lane"
    " ON {s}.trapeze_stream_records (stream, partition, label, id)",
    "CREATE INDEX trapeze_stream_records_stream ON {s}.trapeze_stream_records (stream, id)",
    """CREATE TABLE {s}.trapeze_stream_counters (
        stream text NOT NULL, label text NOT NULL, n bigint NOT NULL,
        PRIMARY KEY (stream, label)
    )""",
    """CREATE TABLE {s}.trapeze_stream_lanes (
        stream text NOT NULL, partition text NOT NULL, label text NOT NULL,
        last_id bigint NOT NULL,
        PRIMARY KEY (stream, partition, label)
    )""",
    """CREATE TABLE {s}.trapeze_stream_checkpoints (
        stream text NOT NULL, consumer text NOT NULL, partition text NOT NULL,
        label text NOT NULL,
        last_id bigint NOT NULL, attempts integer NOT NULL, next_at double precision NOT NULL,
        last_error text,
        PRIMARY KEY (stream, consumer, partition, label)
    )""",
    """CREATE TABLE {s}.trapeze_stream_dead_letters (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        stream text NOT NULL, consumer text NOT NULL, partition text NOT NULL,
        label text NOT NULL,          -- the label the failure is known at
        record_id bigint NOT NULL, attempts integer NOT NULL, error text,
        time double precision NOT NULL
    )""",
    "CREATE INDEX trapeze_stream_dead_letters_stream"
    " ON {s}.trapeze_stream_dead_letters (stream, id)",
    """CREATE TABLE {s}.trapeze_wf_executions (
        id text PRIMARY KEY,
        workflow text NOT NULL, name text NOT NULL,
        start_label text NOT NULL,    -- decides who sees the entry at all
        label text NOT NULL,          -- the label of the status/output fields below
        status text NOT NULL,
        input text NOT NULL, output text, error text, cause text,
        created double precision NOT NULL, updated double precision NOT NULL
    )""",
    "CREATE INDEX trapeze_wf_executions_name ON {s}.trapeze_wf_executions (workflow, name)",
    "CREATE INDEX trapeze_wf_executions_status ON {s}.trapeze_wf_executions (status)",
    """CREATE TABLE {s}.trapeze_wf_frames (
        exec_id text NOT NULL, frame_id text NOT NULL,
        state text NOT NULL, step integer NOT NULL,
        input text NOT NULL, label text NOT NULL, status text NOT NULL,
        output text, error text, cause text,
        retries text NOT NULL, wait_until double precision, token text,
        entered double precision NOT NULL,
        PRIMARY KEY (exec_id, frame_id)
    )""",
    """CREATE TABLE {s}.trapeze_wf_history (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        exec_id text NOT NULL, time double precision NOT NULL, label text NOT NULL,
        frame_id text NOT NULL, type text NOT NULL, state text, detail text
    )""",
    "CREATE INDEX trapeze_wf_history_exec ON {s}.trapeze_wf_history (exec_id, id)",
    """CREATE TABLE {s}.trapeze_wf_tokens (
        token text PRIMARY KEY,
        exec_id text NOT NULL, frame_id text NOT NULL, label text NOT NULL,
        activity text, input text NOT NULL,
        status text NOT NULL,          -- pending | claimed | succeeded | failed | timedout
        output text, error text, cause text, created double precision NOT NULL
    )""",
    "CREATE INDEX trapeze_wf_tokens_activity"
    " ON {s}.trapeze_wf_tokens (activity, status, created)",
]
_ENGINE_DDL_BY_COMPONENT = {"engine": _ENGINE_DDL}
# Steps from version v to v + 1, when a schema change comes.
_ENGINE_MIGRATIONS: dict[tuple[str, int], list[str]] = {}

# One statement (see the module docstring for why the counter comes first).
_APPEND = """
WITH counter AS (
    INSERT INTO {s}.trapeze_stream_counters AS c (stream, label, n)
    VALUES (%(stream)s, %(label)s, 1)
    ON CONFLICT (stream, label) DO UPDATE SET n = c.n + 1
    RETURNING n
), rec AS (
    INSERT INTO {s}.trapeze_stream_records (stream, partition, label, lane_seq, data, arrived)
    SELECT %(stream)s, %(partition)s, %(label)s, counter.n, %(data)s, %(now)s FROM counter
    RETURNING id, lane_seq
), lane AS (
    INSERT INTO {s}.trapeze_stream_lanes AS l (stream, partition, label, last_id)
    SELECT %(stream)s, %(partition)s, %(label)s, rec.id FROM rec
    ON CONFLICT (stream, partition, label)
    DO UPDATE SET last_id = GREATEST(l.last_id, EXCLUDED.last_id)
)
SELECT id, lane_seq FROM rec"""

# Is the advisory lock on hash(key) granted to the claim session (pid)? A bigint lock shows
# its high half in classid, its low half in objid, and objsubid 1.
_FENCE = (
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND pid = %s AND objsubid = 1 AND classid = ((h.k >> 32) & 4294967295)::oid"
    " AND objid = (h.k & 4294967295)::oid) FROM (SELECT hashtextextended(%s, 0) AS k) AS h"
)
_TRY_LOCK = "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))"
_UNLOCK = "SELECT pg_advisory_unlock(hashtextextended(%s, 0))"
# Claim every unclaimed RUNNING execution in one round trip. OFFSET 0 keeps the subquery
# from being flattened, so the lock function runs only on the rows that pass its filter.
_CLAIM_RUNNING = (
    "SELECT id FROM (SELECT id, created FROM {s}.trapeze_wf_executions"
    " WHERE status = 'RUNNING' AND NOT (id = ANY(%(skip)s)) ORDER BY created, id OFFSET 0)"
    " AS candidate WHERE pg_try_advisory_lock(hashtextextended(%(prefix)s || id, 0))"
)

_SQL = EngineSQL(
    param="%s",
    lanes=(
        "SELECT l.partition, l.label, l.last_id, COALESCE(c.last_id, 0),"
        " COALESCE(c.attempts, 0), COALESCE(c.next_at, 0)"
        " FROM {s}.trapeze_stream_lanes l LEFT JOIN {s}.trapeze_stream_checkpoints c"
        " ON c.stream = l.stream AND c.consumer = %s AND c.partition = l.partition"
        " AND c.label = l.label WHERE l.stream = %s"
    ),
    first_pending=(
        "SELECT MIN(id) FROM {s}.trapeze_stream_records WHERE stream = %s"
        " AND partition = %s AND label = %s AND id > %s"
    ),
    lane_records=(
        f"SELECT {RECORD_COLUMNS} FROM {{s}}.trapeze_stream_records WHERE stream = %s"
        " AND partition = %s AND label = %s AND id > %s AND id < %s ORDER BY id LIMIT %s"
    ),
    upsert_checkpoint=(
        "INSERT INTO {s}.trapeze_stream_checkpoints AS c (stream, consumer, partition, label,"
        " last_id, attempts, next_at, last_error) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (stream, consumer, partition, label) DO UPDATE SET"
        " last_id = EXCLUDED.last_id, attempts = EXCLUDED.attempts,"
        " next_at = EXCLUDED.next_at, last_error = EXCLUDED.last_error"
        " WHERE c.last_id <= EXCLUDED.last_id"  # never backwards
    ),
    insert_dead_letter=(
        "INSERT INTO {s}.trapeze_stream_dead_letters (stream, consumer, partition, label,"
        " record_id, attempts, error, time) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
    ),
    dead_letters=(
        "SELECT d.consumer, d.partition, d.label, d.attempts, d.error, d.time, r.label,"
        " r.lane_seq, r.data FROM {s}.trapeze_stream_dead_letters d"
        " JOIN {s}.trapeze_stream_records r ON r.id = d.record_id"
        " WHERE d.stream = %s ORDER BY d.id"
    ),
    retrying_dead_letters=(
        "SELECT d.consumer, d.partition, d.label, d.attempts, d.error, d.time, d.record_id,"
        " r.label FROM {s}.trapeze_stream_dead_letters d"
        " JOIN {s}.trapeze_stream_records r ON r.id = d.record_id"
        " WHERE d.stream = %s AND d.attempts < %s ORDER BY d.id"
    ),
    delete_dead_letter=(
        "DELETE FROM {s}.trapeze_stream_dead_letters WHERE stream = %s AND consumer = %s"
        " AND partition = %s AND label = %s AND record_id = %s"
    ),
    start_labels=(
        "SELECT start_label FROM {s}.trapeze_wf_executions WHERE workflow = %s AND name = %s"
    ),
    insert_execution=(
        "INSERT INTO {s}.trapeze_wf_executions (id, workflow, name, start_label, label,"
        " status, input, created, updated)"
        " VALUES (%s, %s, %s, %s, %s, 'RUNNING', %s, %s, %s)"
    ),
    insert_root_frame=(
        "INSERT INTO {s}.trapeze_wf_frames (exec_id, frame_id, state, step, input, label,"
        " status, retries, entered) VALUES (%s, '', %s, 0, %s, %s, 'running', '{}', %s)"
    ),
    upsert_frame=(
        "INSERT INTO {s}.trapeze_wf_frames (exec_id, frame_id, state, step, input, label,"
        " status, output, error, cause, retries, wait_until, token, entered)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (exec_id, frame_id) DO UPDATE SET"
        " state = EXCLUDED.state, step = EXCLUDED.step,"
        " input = EXCLUDED.input, label = EXCLUDED.label,"
        " status = EXCLUDED.status, output = EXCLUDED.output,"
        " error = EXCLUDED.error, cause = EXCLUDED.cause,"
        " retries = EXCLUDED.retries, wait_until = EXCLUDED.wait_until,"
        " token = EXCLUDED.token, entered = EXCLUDED.entered"
    ),
    frame=(
        f"SELECT {', '.join(FRAME_COLUMNS)} FROM {{s}}.trapeze_wf_frames"
        " WHERE exec_id = %s AND frame_id = %s"
    ),
    set_execution_label=(
        "UPDATE {s}.trapeze_wf_executions SET label = %s, updated = %s WHERE id = %s"
    ),
    finish_execution=(
        "UPDATE {s}.trapeze_wf_executions SET status = %s, label = %s, output = %s,"
        " error = %s, cause = %s, updated = %s WHERE id = %s"
    ),
    executions=f"SELECT {', '.join(EXECUTION_COLUMNS)} FROM {{s}}.trapeze_wf_executions",
    insert_history_event=(
        "INSERT INTO {s}.trapeze_wf_history (exec_id, time, label, frame_id, type, state,"
        " detail) VALUES (%s, %s, %s, %s, %s, %s, %s)"
    ),
    history=(
        "SELECT id, time, label, frame_id, type, state, detail FROM {s}.trapeze_wf_history"
        " WHERE exec_id = %s ORDER BY id"
    ),
    token=f"SELECT {', '.join(TOKEN_COLUMNS)} FROM {{s}}.trapeze_wf_tokens WHERE token = %s",
)


_T = TypeVar("_T")

# The server drops a vanished client's session (and its claims) after idle + interval·count.
_KEEPALIVES = ("SET tcp_keepalives_idle = 10", "SET tcp_keepalives_interval = 5",
               "SET tcp_keepalives_count = 3")


class _ClaimSession:
    """The dedicated connection whose session-level advisory locks are this object's claims.

    Invariant: `held` is exactly the set of claims the current session holds; when anything
    goes wrong on the session, it is closed (the server drops its locks) and `held` emptied.
    """

    def __init__(self, cfg: PostgresConfig, prefix: str) -> None:
        self._cfg = cfg
        self.prefix = prefix  # "trapeze:<schema>:", so that schemas sharing a database differ
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._pid = 0
        self.held: set[str] = set()
        self._closed = False

    def _session(self) -> psycopg.Connection[Any]:
        """The live session (caller holds self._lock), reconnecting with no claims."""
        if self._closed:
            raise StoreClosedError("the engine tables are closed")
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self._drop()
        try:
            conn = psycopg.connect(self._cfg.conninfo, autocommit=True)
        except psycopg.OperationalError as exc:
            raise _connect_error(exc, self._cfg) from None
        try:
            _configure(conn)
            for stmt in _KEEPALIVES:
                conn.execute(stmt)
        except BaseException:
            conn.close()
            raise
        self._conn, self._pid = conn, conn.info.backend_pid
        return conn

    def _drop(self) -> None:
        """Close the session: the server releases every claim it held."""
        conn, self._conn = self._conn, None
        self.held.clear()
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:
                pass

    def _run(self, op: Callable[[psycopg.Connection[Any]], _T]) -> _T:
        """Run `op` on the session (under the lock). On a connection error the session is
        replaced and `op` tried once more: a session that died (server restart, a cut
        connection) is only noticed when used, and its claims are gone already."""
        with self._lock:
            for attempt in (1, 2):
                conn = self._session()
                try:
                    return op(conn)
                except psycopg.OperationalError:
                    # Which locks the failed statement took is unknown: drop them all.
                    self._drop()
                    if attempt == 2:
                        raise
                except BaseException:
                    self._drop()
                    raise
            raise AssertionError("unreachable")

    def claim(self, key: str) -> bool:
        def op(conn: psycopg.Connection[Any]) -> bool:
            if key in self.held:
                return False  # exclusive, within this object too
            row = conn.execute(_TRY_LOCK, (self.prefix + key,)).fetchone()
            if row is not None and row[0]:
                self.held.add(key)
                return True
            return False

        return self._run(op)

    def release(self, key: str) -> None:
        with self._lock:
            if key not in self.held or self._conn is None:
                return
            self.held.discard(key)
            try:
                self._conn.execute(_UNLOCK, (self.prefix + key,))
            except psycopg.Error:
                self._drop()

    def claim_running(self, query: str, skip: Collection[str]) -> list[str]:
        def op(conn: psycopg.Connection[Any]) -> list[str]:
            skip_ids = set(skip) | {k[len(EXEC_CLAIM_PREFIX):] for k in self.held
                                    if k.startswith(EXEC_CLAIM_PREFIX)}
            rows = conn.execute(query, {"skip": sorted(skip_ids),
                                        "prefix": self.prefix + EXEC_CLAIM_PREFIX}).fetchall()
            ids = [str(r[0]) for r in rows]
            self.held.update(exec_claim(i) for i in ids)
            return ids

        return self._run(op)

    def check(self, conn: psycopg.Connection[Any], key: str) -> None:
        """The fence: raise ClaimLost unless the claim session still holds `key`."""
        with self._lock:
            if key not in self.held:
                raise ClaimLost(f"not holding the claim {key}")
            pid = self._pid
        row = conn.execute(_FENCE, (pid, self.prefix + key)).fetchone()
        if row is None or not row[0]:
            raise ClaimLost(f"the claim {key} was lost (its session ended)")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop()


class PostgresEngineDB(EngineDB):
    """The engine tables on PostgreSQL (a connection pool, and a claim session)."""

    adopt_interval = 2.0
    sql = _SQL

    def __init__(self, config: PostgresConfig) -> None:
        self.config = config
        s = config.schema
        self._pool = _Pool(config, lambda c: _ensure_schema(
            c, s, ("engine",), config.target, versions=ENGINE_SCHEMA_VERSIONS,
            ddl=_ENGINE_DDL_BY_COMPONENT, migrations=_ENGINE_MIGRATIONS))
        self._claims = _ClaimSession(config, f"trapeze:{s}:")
        self._filled: dict[str, str] = {}

    @classmethod
    def from_url(cls, url: str) -> PostgresEngineDB:
        return cls(parse_postgres_url(url))

    def __repr__(self) -> str:
        return f"PostgresEngineDB({self.config.target!r}, schema={self.config.schema!r})"

    def close(self) -> None:
        self._claims.close()
        self._pool.close()

    # ------------------------------------------------------------------ primitives
    def _q(self, template: str) -> str:
        """A statement with the schema filled in (cached: the templates are fixed text)."""
        text = self._filled.get(template)
        if text is None:
            text = self._filled[template] = _q(template, self.config.schema)
        return text

    @contextmanager
    def _write(self, fence: str | None = None) -> Iterator[psycopg.Connection[Any]]:
        with self._pool.conn() as conn, conn.transaction():
            if fence is not None:
                self._claims.check(conn, fence)
            yield conn

    def _read(self, template: str, params: Any = ()) -> list[tuple[Any, ...]]:
        with self._pool.conn() as conn:
            return conn.execute(self._q(template), params).fetchall()

    def _execute(self, conn: psycopg.Connection[Any], template: str,
                 params: Sequence[Any]) -> psycopg.Cursor[Any]:
        return conn.execute(self._q(template), params)

    def _execute_many(self, conn: psycopg.Connection[Any], template: str,
                      rows: list[tuple[Any, ...]]) -> None:
        with conn.cursor() as cur:
            cur.executemany(self._q(template), rows)

    def is_transient(self, exc: BaseException) -> bool:
        # Connection lost, server shutting down, pool exhausted, deadlock/serialization
        # (TransactionRollbackError is an OperationalError): resume later, do not fail.
        return isinstance(exc, (ClaimLost, psycopg.OperationalError, StoreUnavailableError))

    # ------------------------------------------------------------------ claims
    def claim(self, key: str) -> bool:
        return self._claims.claim(key)

    def release(self, key: str) -> None:
        self._claims.release(key)

    def claim_running_executions(self, exclude: Collection[str]) -> list[dict[str, Any]]:
        ids = self._claims.claim_running(self._q(_CLAIM_RUNNING), exclude)
        if not ids:
            return []
        # Read again after claiming: one may have finished between the claim query's
        # snapshot and its lock (its holder released it after recording the end).
        rows = self._executions("id = ANY(%s)", [ids])
        out = []
        for row in rows:
            if row["status"] == "RUNNING":
                out.append(row)
            else:
                self.release(exec_claim(row["id"]))
        for gone in set(ids) - {row["id"] for row in rows}:
            self.release(exec_claim(gone))
        return out

    # ================================================================== streams
    def append_record(self, stream: str, partition: str, label: str, data: str,
                      now: float) -> tuple[int, int]:
        rows = self._read(_APPEND, {"stream": stream, "partition": partition, "label": label,
                                    "data": data, "now": now})
        rid, n = rows[0]
        return int(rid), int(n)

    def _records_in_order(self, stream: str, newest_first: bool) -> Iterator[StoredRecord]:
        # Pages by id: a psycopg cursor fetches its whole result at once, so one query would
        # read the whole stream even when the caller stops after a few records.
        order, cmp = ("DESC", "<") if newest_first else ("ASC", ">")
        base = f"SELECT {RECORD_COLUMNS} FROM {{s}}.trapeze_stream_records WHERE stream = %s"
        after: int | None = None
        page = 500
        while True:
            if after is None:
                rows = self._read(base + f" ORDER BY id {order} LIMIT %s", (stream, page))
            else:
                rows = self._read(base + f" AND id {cmp} %s ORDER BY id {order} LIMIT %s",
                                  (stream, after, page))
            for row in rows:
                yield StoredRecord.from_row(row)
            if len(rows) < page:
                return
            after = int(rows[-1][0])

    # ================================================================== workflows
    def _serialise_starts(self, conn: psycopg.Connection[Any], workflow: str,
                          name: str) -> None:
        # Serialises starters of this (workflow, name) on every machine until commit (a row
        # that does not exist yet cannot be locked).
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                     (self._claims.prefix + "name:" + dumps([workflow, name]),))

    # ------------------------------------------------------------------ task tokens
    def new_token(self, token: str, exec_id: str, frame_id: str, label: str,
                  activity: str | None, input_text: str) -> None:
        self._read(
            "INSERT INTO {s}.trapeze_wf_tokens (token, exec_id, frame_id, label, activity,"
            " input, status, created) VALUES (%s, %s, %s, %s, %s, %s, 'pending', %s)"
            " ON CONFLICT (token) DO NOTHING RETURNING token",
            (token, exec_id, frame_id, label, activity, input_text, time.time()),
        )

    def _settle_token(self, token: str, status: str, output_text: str | None,
                      error: str | None, cause: str | None) -> bool:
        rows = self._read(
            "UPDATE {s}.trapeze_wf_tokens SET status = %s, output = %s, error = %s,"
            " cause = %s WHERE token = %s AND status IN ('pending', 'claimed')"
            " RETURNING token",
            (status, output_text, error, cause, token),
        )
        return len(rows) == 1

    def claim_activity_task(self, activity: str, label: str,
                            exec_id: str | None) -> tuple[str, str] | None:
        only_exec = "" if exec_id is None else " AND exec_id = %s"
        params: tuple[Any, ...] = (activity, label) + (() if exec_id is None else (exec_id,))
        rows = self._read(
            "UPDATE {s}.trapeze_wf_tokens SET status = 'claimed' WHERE token = ("
            " SELECT token FROM {s}.trapeze_wf_tokens WHERE activity = %s"
            " AND status = 'pending' AND label = %s" + only_exec +
            " ORDER BY created LIMIT 1 FOR UPDATE SKIP LOCKED) AND status = 'pending'"
            " RETURNING token, input",
            params,
        )
        return None if not rows else (str(rows[0][0]), str(rows[0][1]))
