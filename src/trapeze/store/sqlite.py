"""SQLite backends: the faceted store and the plain (IFC-off) baseline.

Layout. All facets live in one WITHOUT ROWID table clustered on ``(tbl, key, seq)``, so the
facets of a key are adjacent on one B-tree page and a newest-first walk is a reverse range
scan. Labels are stored as their canonical text; ``trapeze_flows(a, b)`` is the lattice's
memoised ``flows`` registered as a deterministic SQL function on every connection, so the
visibility test runs inside SQLite and a ``get`` stops at the first visible facet without
materialising the others in Python.

The write rule (DESIGN §5) is one ``INSERT`` statement: a ``BEFORE INSERT`` trigger deletes
the key's facets whose label the new label flows to and advances the store-wide counter. One
statement in autocommit mode takes SQLite's write lock before it reads anything, so the rule
is atomic across threads and processes without an explicit transaction, and costs the same
number of round trips from Python as the plain store's upsert. The counter is a single row
(not ``max(seq)``, which would need a second index, and not rowid reuse, which could hand out
a seq twice after deletions), so seq is strictly increasing store-wide.

Concurrency. One connection per thread (sqlite3 connections must not be shared), WAL so that
readers never block the writer, a busy timeout so writers queue instead of failing, and
``BEGIN IMMEDIATE`` for multi-statement writes (conditional puts) so they never have to upgrade
a read snapshot, which in WAL mode fails without waiting.

Durability. ``synchronous=NORMAL`` with WAL: a committed transaction is in the WAL file in the
OS page cache before the call returns, so it survives kill -9 of the process; surviving power
loss needs ``?synchronous=full`` (an fsync per commit).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote

from trapeze.errors import ConfigError, InvalidArgument, TrapezeError
from trapeze.labels import LabelError, Lattice
from trapeze.store.base import MISSING, FacetedStore, PlainStore
from trapeze.store.system import SystemTables
from trapeze.store.values import (
    Value,
    canonical,
    check_key,
    check_name,
    check_table,
    decode_value,
    encode_value,
)


class StoreClosedError(TrapezeError):
    """The store was closed; open a new one."""


MAX_SCAN_LIMIT = 10_000

_SYNC_MODES = {"off": "OFF", "normal": "NORMAL", "full": "FULL", "extra": "EXTRA"}


@dataclass(frozen=True)
class SqliteConfig:
    path: str
    synchronous: str = "NORMAL"
    busy_timeout_ms: int = 10_000


def parse_sqlite_url(url: str) -> SqliteConfig:
    """``sqlite:///abs/path.db`` or ``sqlite://rel/path.db``, with optional query
    ``?synchronous=normal|full|extra|off`` and ``?busy_timeout=MILLISECONDS``."""
    if not url.startswith("sqlite://"):
        raise ConfigError(f"not a sqlite URL: {url!r} (write sqlite:///path/to/app.db)")
    rest = url[len("sqlite://") :]
    raw_path, _, query = rest.partition("?")
    path = unquote(raw_path)
    if path.startswith("/"):
        # sqlite:////tmp/x.db (a URL built from an absolute path) means /tmp/x.db as well.
        path = "/" + path.lstrip("/")
    if not path or path == "/" or path == ":memory:":
        raise ConfigError(
            f"store URL {url!r} needs a file path, like sqlite:///var/lib/app.db "
            "(an in-memory database cannot be shared between threads and processes)"
        )
    sync = "NORMAL"
    busy = 10_000
    for name, val in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if name == "synchronous":
            if val.lower() not in _SYNC_MODES:
                raise ConfigError(
                    f"store URL: synchronous={val!r}; use one of {', '.join(_SYNC_MODES)}"
                )
            sync = _SYNC_MODES[val.lower()]
        elif name == "busy_timeout":
            if not val.isdigit():
                raise ConfigError(f"store URL: busy_timeout={val!r}; use milliseconds")
            busy = int(val)
        else:
            raise ConfigError(
                f"store URL: unknown option {name!r}; known: synchronous, busy_timeout"
            )
    return SqliteConfig(path=path, synchronous=sync, busy_timeout_ms=busy)


class _Connections:
    """One sqlite3 connection per thread, all closed together by :meth:`close`."""

    def __init__(self, config: SqliteConfig, setup: Callable[[sqlite3.Connection], None]):
        self._config = config
        self._setup = setup
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self.closed = False

    def get(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self.closed:
                raise StoreClosedError("the store is closed")
            conn = self._open()
            self._local.conn = conn
        return conn

    def _open(self) -> sqlite3.Connection:
        cfg = self._config
        directory = os.path.dirname(cfg.path)
        if directory and not os.path.isdir(directory):
            raise ConfigError(f"store directory does not exist: {directory}")
        # isolation_level=None: we issue BEGIN ourselves; single statements autocommit.
        # check_same_thread=False only so close() may close another thread's connection;
        # each connection is otherwise used by its own thread alone.
        conn = sqlite3.connect(
            cfg.path,
            timeout=cfg.busy_timeout_ms / 1000,
            isolation_level=None,
            check_same_thread=False,
            cached_statements=256,
        )
        conn.execute(f"PRAGMA busy_timeout = {int(cfg.busy_timeout_ms)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            conn.close()
            raise ConfigError(f"could not put {cfg.path} in WAL mode (got {mode!r})")
        conn.execute(f"PRAGMA synchronous = {cfg.synchronous}")
        self._setup(conn)
        with self._lock:
            if self.closed:
                conn.close()
                raise StoreClosedError("the store is closed")
            # Connections of threads that have ended would otherwise live until close().
            live = []
            for thread, other in self._all:
                if thread.is_alive():
                    live.append((thread, other))
                else:
                    other.close()
            live.append((threading.current_thread(), conn))
            self._all = live
        return conn

    def close(self) -> None:
        with self._lock:
            self.closed = True
            conns, self._all = self._all, []
        for _, conn in conns:
            try:
                conn.close()
            except sqlite3.ProgrammingError:
                pass  # another thread is mid-call; its connection dies with the thread


def _begin_immediate(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")


def _prefix_upper(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix`` (None: none).

    SQLite compares TEXT as UTF-8 bytes, which orders like code points, so incrementing the
    last code point works; surrogates are skipped because they cannot be encoded.
    """
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last == 0x10FFFF:
            continue
        nxt = last + 1
        if 0xD800 <= nxt <= 0xDFFF:
            nxt = 0xE000
        return "".join(chars) + chr(nxt)
    return None


def _check_limit(limit: object) -> int:
    if type(limit) is not int or limit < 0:
        raise InvalidArgument(f"limit must be a non-negative int, got {limit!r:.40}")
    if limit > MAX_SCAN_LIMIT:
        raise InvalidArgument(f"limit {limit} is too large; at most {MAX_SCAN_LIMIT}")
    return limit


def _check_bound(what: str, text: object) -> str:
    # prefix and start_after are compared with keys, so they obey the key rules.
    return check_name(what, text, allow_empty=True)


def _scan_sql(select: str, where_extra: str, prefix: str, start_after: str | None,
              head: list[object]) -> tuple[str, list[object]]:
    """Key-range conditions shared by both stores' scans."""
    conds = ["tbl = ?"]
    params: list[object] = list(head)
    if prefix:
        conds.append("key >= ?")
        params.append(prefix)
        upper = _prefix_upper(prefix)
        if upper is not None:
            conds.append("key < ?")
            params.append(upper)
    if start_after is not None:
        conds.append("key > ?")
        params.append(start_after)
    if where_extra:
        conds.append(where_extra)
    return select.format(where=" AND ".join(conds)), params


# ---------------------------------------------------------------------------------- faceted

_FACETED_SCHEMA = """
CREATE TABLE IF NOT EXISTS facets (
    tbl   TEXT    NOT NULL,
    key   TEXT    NOT NULL,
    seq   INTEGER NOT NULL,
    label TEXT    NOT NULL,
    value,                      -- JSON text, BLOB for bytes, NULL for a tombstone
    PRIMARY KEY (tbl, key, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS facet_seq (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    n  INTEGER NOT NULL
);
INSERT OR IGNORE INTO facet_seq (id, n) VALUES (0, 0);
CREATE TRIGGER IF NOT EXISTS facets_write_rule BEFORE INSERT ON facets
BEGIN
    DELETE FROM facets
     WHERE tbl = NEW.tbl AND key = NEW.key AND trapeze_flows(NEW.label, label);
    UPDATE facet_seq SET n = NEW.seq WHERE id = 0;
END;
"""

_F_GET = (
    "SELECT value FROM facets WHERE tbl = ? AND key = ? AND trapeze_flows(label, ?) "
    "ORDER BY seq DESC LIMIT 1"
)
_F_FACETS = (
    "SELECT value, label FROM facets WHERE tbl = ? AND key = ? AND value IS NOT NULL "
    "AND trapeze_flows(label, ?) ORDER BY seq DESC"
)
_F_PUT = (
    "INSERT INTO facets (tbl, key, seq, label, value) "
    "VALUES (?, ?, (SELECT n + 1 FROM facet_seq WHERE id = 0), ?, ?) RETURNING seq"
)
# Bare columns of a max() aggregate come from the row holding the max (documented SQLite
# behaviour), so this yields each key's newest visible facet; GROUP BY follows the primary
# key, so rows stream in key order and LIMIT stops the walk early. Keys whose get would be
# None are skipped: tombstones (NULL) and the JSON null (text 'null'; a BLOB never equals it).
_F_SCAN = (
    "SELECT key, value, max(seq) FROM facets WHERE {where} "
    "GROUP BY key HAVING value IS NOT NULL AND value IS NOT 'null' ORDER BY key LIMIT ?"
)
_F_RAW = "SELECT seq, label, value FROM facets WHERE tbl = ? AND key = ? ORDER BY seq DESC"
_F_TABLES = "SELECT DISTINCT tbl FROM facets WHERE trapeze_flows(label, ?) ORDER BY tbl"


class SqliteFacetedStore(FacetedStore):
    def __init__(self, config: SqliteConfig, lattice: Lattice) -> None:
        self.config = config
        self.lattice = lattice
        lat_flows = lattice.flows

        def flows(a: str, b: str) -> bool:
            try:
                return lat_flows(a, b)
            except LabelError:
                # A facet written under an older manifest with a label this lattice no longer
                # knows: invisible to every reader and removed by no writer, which is the only
                # choice that can neither leak it nor destroy it.
                return False

        def setup(conn: sqlite3.Connection) -> None:
            conn.create_function("trapeze_flows", 2, flows, deterministic=True)

        self._conns = _Connections(config, setup)
        conn = self._conns.get()
        _begin_immediate(conn)
        try:
            for stmt in _split_script(_FACETED_SCHEMA):
                conn.execute(stmt)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.system = SystemTables(self._conns.get, lattice)

    def __repr__(self) -> str:
        return f"SqliteFacetedStore({self.config.path!r})"

    # -- reads
    def get(self, table: str, key: str, *, label: str) -> Value | None:
        check_table(table)
        check_key(key)
        self.lattice.check(label)
        rows = self._conns.get().execute(_F_GET, (table, key, label)).fetchall()
        return decode_value(rows[0][0]) if rows else None

    def facets(self, table: str, key: str, *, label: str) -> list[tuple[Value, str]]:
        check_table(table)
        check_key(key)
        self.lattice.check(label)
        rows = self._conns.get().execute(_F_FACETS, (table, key, label)).fetchall()
        return [(decode_value(v), lab) for v, lab in rows]

    def scan(
        self,
        table: str,
        *,
        label: str,
        prefix: str = "",
        start_after: str | None = None,
        limit: int = 100,
    ) -> list[tuple[str, Value]]:
        check_table(table)
        self.lattice.check(label)
        _check_bound("prefix", prefix)
        if start_after is not None:
            _check_bound("start_after", start_after)
        _check_limit(limit)
        sql, params = _scan_sql(_F_SCAN, "trapeze_flows(label, ?)", prefix, start_after,
                                [table])
        params += [label, limit]
        rows = self._conns.get().execute(sql, params).fetchall()
        return [(k, decode_value(v)) for k, v, _ in rows]

    def tables(self, *, label: str) -> list[str]:
        self.lattice.check(label)
        return [r[0] for r in self._conns.get().execute(_F_TABLES, (label,)).fetchall()]

    def raw_facets(self, table: str, key: str) -> list[tuple[int, str, Value, bool]]:
        rows = self._conns.get().execute(_F_RAW, (table, key)).fetchall()
        return [(s, lab, decode_value(v), v is None) for s, lab, v in rows]

    def integrity_check(self) -> list[str]:
        """SQLite's own consistency check of the whole file (["ok"] when sound)."""
        return [r[0] for r in self._conns.get().execute("PRAGMA integrity_check").fetchall()]

    # -- writes
    def put(
        self, table: str, key: str, value: Value, *, label: str, expect: object = MISSING
    ) -> bool:
        return self.put_seq(table, key, value, label=label, expect=expect) is not None

    def delete(self, table: str, key: str, *, label: str) -> None:
        self.put_seq(table, key, None, label=label, tombstone=True)

    def put_seq(
        self,
        table: str,
        key: str,
        value: Value,
        *,
        label: str,
        expect: object = MISSING,
        tombstone: bool = False,
    ) -> int | None:
        # Validate everything before touching the database: a rejected call writes nothing.
        check_table(table)
        check_key(key)
        self.lattice.check(label)
        stored = None if tombstone else encode_value(value)
        conn = self._conns.get()
        if expect is MISSING:
            return int(conn.execute(_F_PUT, (table, key, label, stored)).fetchall()[0][0])
        if expect is not None:
            encode_value(expect)
        want = canonical(expect)
        _begin_immediate(conn)
        try:
            rows = conn.execute(_F_GET, (table, key, label)).fetchall()
            current = decode_value(rows[0][0]) if rows else None
            if canonical(current) != want:
                conn.execute("ROLLBACK")
                return None
            seq = int(conn.execute(_F_PUT, (table, key, label, stored)).fetchall()[0][0])
            conn.execute("COMMIT")
            return seq
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._conns.close()


# ------------------------------------------------------------------------------------ plain

_PLAIN_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    tbl   TEXT NOT NULL,
    key   TEXT NOT NULL,
    value NOT NULL,
    PRIMARY KEY (tbl, key)
) WITHOUT ROWID;
"""
_P_GET = "SELECT value FROM kv WHERE tbl = ? AND key = ?"
_P_PUT = (
    "INSERT INTO kv (tbl, key, value) VALUES (?, ?, ?) "
    "ON CONFLICT (tbl, key) DO UPDATE SET value = excluded.value"
)
_P_DELETE = "DELETE FROM kv WHERE tbl = ? AND key = ?"
_P_SCAN = "SELECT key, value FROM kv WHERE {where} ORDER BY key LIMIT ?"
_P_SCAN_FILTER = "value IS NOT 'null'"  # as in the faceted scan: skip keys whose get is None
_P_TABLES = "SELECT DISTINCT tbl FROM kv ORDER BY tbl"


class SqlitePlainStore(PlainStore):
    """One value per key, no labels: the benchmark baseline. Same validation, encoding and
    SQLite settings as the faceted store, so a ratio between them measures faceting alone."""

    def __init__(self, config: SqliteConfig) -> None:
        self.config = config
        self._conns = _Connections(config, lambda conn: None)
        conn = self._conns.get()
        _begin_immediate(conn)
        try:
            for stmt in _split_script(_PLAIN_SCHEMA):
                conn.execute(stmt)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.system = SystemTables(self._conns.get, None)

    def __repr__(self) -> str:
        return f"SqlitePlainStore({self.config.path!r})"

    def get(self, table: str, key: str, *, label: str = "") -> Value | None:
        check_table(table)
        check_key(key)
        rows = self._conns.get().execute(_P_GET, (table, key)).fetchall()
        return decode_value(rows[0][0]) if rows else None

    def facets(self, table: str, key: str, *, label: str = "") -> list[tuple[Value, str]]:
        # No labels here: the single value is reported under the caller's label.
        value = self.get(table, key, label=label)
        return [] if value is None else [(value, label)]

    def put(
        self, table: str, key: str, value: Value, *, label: str = "", expect: object = MISSING
    ) -> bool:
        check_table(table)
        check_key(key)
        stored = encode_value(value)
        conn = self._conns.get()
        if expect is MISSING:
            conn.execute(_P_PUT, (table, key, stored))
            return True
        if expect is not None:
            encode_value(expect)
        want = canonical(expect)
        _begin_immediate(conn)
        try:
            rows = conn.execute(_P_GET, (table, key)).fetchall()
            current = decode_value(rows[0][0]) if rows else None
            if canonical(current) != want:
                conn.execute("ROLLBACK")
                return False
            conn.execute(_P_PUT, (table, key, stored))
            conn.execute("COMMIT")
            return True
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def delete(self, table: str, key: str, *, label: str = "") -> None:
        check_table(table)
        check_key(key)
        self._conns.get().execute(_P_DELETE, (table, key))

    def scan(
        self,
        table: str,
        *,
        label: str = "",
        prefix: str = "",
        start_after: str | None = None,
        limit: int = 100,
    ) -> list[tuple[str, Value]]:
        check_table(table)
        _check_bound("prefix", prefix)
        if start_after is not None:
            _check_bound("start_after", start_after)
        _check_limit(limit)
        sql, params = _scan_sql(_P_SCAN, _P_SCAN_FILTER, prefix, start_after, [table])
        params.append(limit)
        rows = self._conns.get().execute(sql, params).fetchall()
        return [(k, decode_value(v)) for k, v in rows]

    def tables(self, *, label: str = "") -> list[str]:
        return [r[0] for r in self._conns.get().execute(_P_TABLES).fetchall()]

    def close(self) -> None:
        self._conns.close()


def _split_script(script: str) -> list[str]:
    """Split a schema script into statements (executescript would COMMIT our transaction).

    Triggers contain ';' inside BEGIN ... END, so split on complete statements instead.
    """
    out: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        if line.strip().startswith("--"):
            continue
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out
