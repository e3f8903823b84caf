"""SQLite backends: the faceted store and the plain (IFC-off) baseline.

Layout. All facets live in one WITHOUT ROWID table ``facets(tbl, key, seq, lid, value)``
clustered on ``(tbl, key, seq)``, so the facets of a key are adjacent and a newest-first walk
is a reverse range scan that stops at the first visible facet. Labels are interned in
``facet_labels(id, label)`` (rows never updated or deleted) and facets store the id.

Visibility without Python callbacks. Per reader label the store builds, once per snapshot of
``facet_labels``, a byte map (byte i = 1 iff stored label i ⊑ reader) and binds it to the
query: the per-row test is ``substr(map, lid + 1, 1) = x'01'``, evaluated in C. The set of
distinct labels in a store is small next to its facets, so the maps are short. A label
interned by another process after the snapshot (id ≥ the map's length) is decided by the
lattice through the SQL function ``trapeze_flows`` instead, which also marks the snapshot
stale so that the next call reloads it: answers never depend on how fresh the snapshot is.

seq is a hybrid timestamp: ``max(time.time_ns() of the writer, max seq of the key + 1)``,
computed inside the INSERT, i.e. under SQLite's write lock. The semantics only compare seqs
of facets of the same key (the write rule, the newest visible facet), and there seq is
strictly increasing, guaranteed whatever the clock does. Across keys seqs follow the wall
clock but are not guaranteed increasing or distinct (concurrent writers on different keys in
the same microseconds, clock steps). This replaced a store-wide counter row, which cost a
second dirty page per commit.

The write rule (DESIGN §5) is one ``INSERT`` statement: the new facet's seq is computed in
its VALUES (before anything is deleted, so it exceeds every seq the key has had), and a
``BEFORE INSERT`` trigger deletes the key's facets whose label the writer's label flows to,
using the writer's upward byte map from ``trapeze_above(lid)`` (one Python call per write,
not per facet). One statement in autocommit mode takes SQLite's write lock before it reads
anything, so the rule is atomic across threads and processes without an explicit
transaction, and costs the same number of round trips from Python as the plain store's
upsert. Writes need both SQL functions, so other tools (the ``sqlite3`` shell) can read the
file but cannot write facets.

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
import time
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

# Labels are interned: facets store a small integer ``lid`` instead of the label text, so that
# visibility can be decided inside SQLite without calling back into Python per row (see
# ``_LabelCache``). Rows of facet_labels are never updated or deleted, so an id, once read,
# names the same label forever, in every process.
_FACETED_TABLES = """
CREATE TABLE IF NOT EXISTS facet_labels (
    id    INTEGER PRIMARY KEY,
    label TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS facets (
    tbl   TEXT    NOT NULL,
    key   TEXT    NOT NULL,
    seq   INTEGER NOT NULL,
    lid   INTEGER NOT NULL,     -- facet_labels.id
    value,                      -- JSON text, BLOB for bytes, NULL for a tombstone
    PRIMARY KEY (tbl, key, seq)
) WITHOUT ROWID;
"""
# The write rule's removal half (_F_PUT fires it): the key's facets at the writer's label or
# above. Deleting the writer's own facet and inserting anew (rather than updating it in place
# under a (tbl, key, lid) key) keeps the table in seq order, which is what lets get stop at
# the first visible facet; measured, the move costs puts less than an unordered layout costs
# gets (docs/store.md, Performance). trapeze_above(lid) is the writer's upward map (byte
# i = 01 iff the writer's label flows to label i), wrapped in a scalar subquery so that SQLite
# calls it once per write, not once per facet. Labels beyond the map (interned by another
# process since; substr yields x'') go to the lattice.
_FACETED_TRIGGER = """
CREATE TRIGGER IF NOT EXISTS facets_write_rule_v1 BEFORE INSERT ON facets
BEGIN
    DELETE FROM facets
     WHERE tbl = NEW.tbl AND key = NEW.key
       AND (lid = NEW.lid
            OR CASE substr((SELECT trapeze_above(NEW.lid)), lid + 1, 1)
                   WHEN x'01' THEN 1
                   WHEN x'00' THEN 0
                   ELSE trapeze_flows((SELECT label FROM facet_labels WHERE id = NEW.lid),
                                      (SELECT label FROM facet_labels WHERE id = lid))
               END);
END;
"""
_FACETED_SCHEMA = _FACETED_TABLES + _FACETED_TRIGGER

# Visibility of the facet in column `lid` to the reader. ?3 is the reader's map of stored
# labels: an integer bit mask while there are at most _MASK_BITS label ids (plain arithmetic,
# the cheapest per-row test), else a byte string (byte i = 01 iff label i flows to the
# reader); ?4 is the number of ids it covers. A label interned after the map was built (id
# >= ?4, by another process) falls back to the lattice (?5 = reader).
def _visible(lid: str, mask: bool) -> str:
    test = f"(?3 >> {lid}) & 1" if mask else f"substr(?3, {lid} + 1, 1) = x'01'"
    return (
        f"({test} OR ({lid} >= ?4 AND trapeze_flows("
        f"(SELECT label FROM facet_labels WHERE id = {lid}), ?5)))"
    )


# Each reader statement in both forms, indexed by "the map is a mask".
_MASKED = (False, True)
# Newest first along the primary key; stops at the first visible facet.
_F_GET = {
    m: "SELECT value FROM facets WHERE tbl = ?1 AND key = ?2 AND "
    + _visible("lid", m)
    + " ORDER BY seq DESC LIMIT 1"
    for m in _MASKED
}
_F_FACETS = {
    m: "SELECT f.value, l.label FROM facets AS f JOIN facet_labels AS l ON l.id = f.lid "
    "WHERE f.tbl = ?1 AND f.key = ?2 AND f.value IS NOT NULL AND "
    + _visible("f.lid", m)
    + " ORDER BY f.seq DESC"
    for m in _MASKED
}
# The write rule is this one statement (see the module docstring). seq is computed in VALUES,
# before the BEFORE INSERT trigger deletes anything, so it exceeds every seq the key has ever
# had (and no two facets of a key can share one); ?4 is the writer's time.time_ns().
_F_PUT = (
    "INSERT INTO facets (tbl, key, lid, seq, value) VALUES (?1, ?2, ?3, "
    "max(?4, coalesce((SELECT max(seq) FROM facets WHERE tbl = ?1 AND key = ?2), 0) + 1), ?5)"
)
_F_PUT_SEQ = _F_PUT + " RETURNING seq"
# Bare columns of a max() aggregate come from the row holding the max (documented SQLite
# behaviour), so this yields each key's newest visible facet; GROUP BY follows the primary
# key, so rows stream in key order and LIMIT stops the walk early. Keys whose get would be
# None are skipped: tombstones (NULL) and the JSON null (text 'null'; a BLOB never equals it).
# ({where} is filled in per call with the key range.)
_F_SCAN = {
    m: "SELECT key, value, max(seq) FROM facets WHERE {where} AND "
    + _visible("lid", m)
    + " GROUP BY key HAVING value IS NOT NULL AND value IS NOT 'null' ORDER BY key LIMIT ?6"
    for m in _MASKED
}
_F_RAW = (
    "SELECT f.seq, l.label, f.value FROM facets AS f JOIN facet_labels AS l ON l.id = f.lid "
    "WHERE f.tbl = ?1 AND f.key = ?2 ORDER BY f.seq DESC"
)
_F_TABLES = {
    m: "SELECT DISTINCT tbl FROM facets WHERE " + _visible("lid", m) + " ORDER BY tbl"
    for m in _MASKED
}
_F_LABELS = "SELECT id, label FROM facet_labels"
_F_INTERN = "INSERT OR IGNORE INTO facet_labels (label) VALUES (?1)"

# Readers and writers whose maps are cached per snapshot of facet_labels; beyond this the
# cache is emptied rather than grown (a map is one byte per stored label).
_MAX_CACHED_LABELS = 4096
# Label ids 0..62 fit an SQLite integer (signed 64-bit) as a bit mask.
_MASK_BITS = 63


class _LabelCache:
    """A snapshot of facet_labels and, per caller label, the byte maps derived from it.

    ``reader(l)`` is the visibility map of ``l``: byte i is 1 iff stored label i ⊑ ``l``;
    ``above(i)`` is the upward map of stored label i: byte j is 1 iff label i ⊑ label j. Ids
    are assigned as max(id) + 1 under SQLite's write lock and never reused, and the snapshot
    is a whole committed table, so every id below ``n`` is in it; ids ≥ ``n`` (labels another
    process interned since) are decided by the lattice in SQL instead, which also marks the
    snapshot stale so that the next call reloads it.
    """

    def __init__(self, rows: list[tuple[int, str]], flows: Callable[[str, str], bool]):
        self.n = 1 + max((i for i, _ in rows), default=0)
        names: list[str | None] = [None] * self.n
        for i, lab in rows:
            names[i] = lab
        self.names = names
        self.ids = {lab: i for i, lab in rows}
        self._flows = flows
        self.readers: dict[str, int | bytes] = {}
        self.uppers: dict[int, bytes] = {}

    def reader(self, label: str) -> int | bytes:
        vis = self.readers.get(label)
        if vis is None:
            if len(self.readers) >= _MAX_CACHED_LABELS:
                self.readers.clear()
            flows = self._flows
            bits = [name is not None and flows(name, label) for name in self.names]
            if self.n <= _MASK_BITS:
                vis = sum(1 << i for i, bit in enumerate(bits) if bit)
            else:
                vis = bytes(bits)
            self.readers[label] = vis
        return vis

    def above(self, lid: int) -> bytes:
        up = self.uppers.get(lid)
        if up is None:
            label = self.names[lid] if 0 <= lid < self.n else None
            if label is None:
                return b""  # unknown here: the SQL falls back to the lattice for every facet
            if len(self.uppers) >= _MAX_CACHED_LABELS:
                self.uppers.clear()
            flows = self._flows
            up = bytes(name is not None and flows(label, name) for name in self.names)
            self.uppers[lid] = up
        return up


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

        def flows_sql(a: str | None, b: str | None) -> bool:
            # Only reached for labels interned after our snapshot: reload it on the next call.
            self._stale = True
            return a is not None and b is not None and flows(a, b)

        def above_sql(lid: int) -> bytes:
            return self._cache.above(lid)

        def setup(conn: sqlite3.Connection) -> None:
            conn.create_function("trapeze_flows", 2, flows_sql, deterministic=True)
            # Not deterministic: the map grows when the snapshot is reloaded.
            conn.create_function("trapeze_above", 1, above_sql)

        self._flows = flows
        self._stale = False
        self._conns = _Connections(config, setup)
        conn = self._conns.get()
        _begin_immediate(conn)
        try:
            _migrate_v0(conn)
            for stmt in _split_script(_FACETED_SCHEMA):
                conn.execute(stmt)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._cache = self._load_labels()
        self.system = SystemTables(self._conns.get, lattice)

    def __repr__(self) -> str:
        return f"SqliteFacetedStore({self.config.path!r})"

    # -- label maps
    def _load_labels(self) -> _LabelCache:
        self._stale = False
        rows = self._conns.get().execute(_F_LABELS).fetchall()
        cache = _LabelCache(rows, self._flows)
        self._cache = cache
        return cache

    def _labels(self) -> _LabelCache:
        return self._load_labels() if self._stale else self._cache

    def _read_args(self, label: str) -> tuple[int | bytes, int, str]:
        """Validate a reader label; the ?3, ?4, ?5 of the visibility test."""
        cache = self._labels()
        vis = cache.readers.get(label)
        if vis is None:
            # Checked once per label per snapshot: a cached label has passed the check.
            self.lattice.check(label)
            vis = cache.reader(label)
        return vis, cache.n, label

    def _write_args(self, label: str) -> int:
        """Validate a writer label, interning it if new; its id."""
        lid = self._labels().ids.get(label)
        if lid is None:
            self.lattice.check(label)
            # Its own autocommit statement, before the write's transaction: the row is
            # metadata only (harmless if the write then fails), and committed before any
            # process can see an id, so ids are never handed out twice.
            self._conns.get().execute(_F_INTERN, (label,))
            lid = self._load_labels().ids[label]
        return lid

    # -- reads
    def get(self, table: str, key: str, *, label: str) -> Value | None:
        check_table(table)
        check_key(key)
        vis = self._read_args(label)
        rows = self._conns.get().execute(_F_GET[type(vis[0]) is int], (table, key, *vis)).fetchall()
        return decode_value(rows[0][0]) if rows else None

    def facets(self, table: str, key: str, *, label: str) -> list[tuple[Value, str]]:
        check_table(table)
        check_key(key)
        vis = self._read_args(label)
        sql = _F_FACETS[type(vis[0]) is int]
        rows = self._conns.get().execute(sql, (table, key, *vis)).fetchall()
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
        vis = self._read_args(label)
        _check_bound("prefix", prefix)
        if start_after is not None:
            _check_bound("start_after", start_after)
        _check_limit(limit)
        # Numbered parameters: ?1 table, ?3..?5 visibility, ?6 limit, ?7.. the key range.
        conds = ["tbl = ?1"]
        params: list[object] = [table, None, *vis, limit]
        if prefix:
            params.append(prefix)
            conds.append(f"key >= ?{len(params)}")
            upper = _prefix_upper(prefix)
            if upper is not None:
                params.append(upper)
                conds.append(f"key < ?{len(params)}")
        if start_after is not None:
            params.append(start_after)
            conds.append(f"key > ?{len(params)}")
        sql = _F_SCAN[type(vis[0]) is int].format(where=" AND ".join(conds))
        rows = self._conns.get().execute(sql, params).fetchall()
        return [(k, decode_value(v)) for k, v, _ in rows]

    def tables(self, *, label: str) -> list[str]:
        vis = self._read_args(label)
        # ?1 and ?2 are unused here; numbered parameters keep _visible shared.
        sql = _F_TABLES[type(vis[0]) is int]
        rows = self._conns.get().execute(sql, (None, None, *vis)).fetchall()
        return [r[0] for r in rows]

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
        if expect is not MISSING:
            return self.put_seq(table, key, value, label=label, expect=expect) is not None
        check_table(table)
        check_key(key)
        stored = encode_value(value)  # before interning: a rejected value writes nothing
        lid = self._write_args(label)
        # One statement in autocommit mode: atomic (it takes the write lock before reading),
        # and as many round trips as the plain store's upsert.
        self._conns.get().execute(_F_PUT, (table, key, lid, time.time_ns(), stored))
        return True

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
        want: str | None = None
        if expect is not MISSING:
            if expect is not None:
                encode_value(expect)
            want = canonical(expect)
        lid = self._write_args(label)
        conn = self._conns.get()
        if expect is MISSING:
            return int(conn.execute(_F_PUT_SEQ, (table, key, lid, time.time_ns(), stored))
                       .fetchall()[0][0])
        _begin_immediate(conn)
        try:
            vis = self._read_args(label)
            rows = conn.execute(_F_GET[type(vis[0]) is int], (table, key, *vis)).fetchall()
            current = decode_value(rows[0][0]) if rows else None
            if canonical(current) != want:
                conn.execute("ROLLBACK")
                return None
            seq = int(conn.execute(_F_PUT_SEQ, (table, key, lid, time.time_ns(), stored))
                      .fetchall()[0][0])
            conn.execute("COMMIT")
            return seq
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._conns.close()


def _migrate_v0(conn: sqlite3.Connection) -> None:
    """Convert a file of the first layout (label text in facets, counter row facet_seq).

    Runs inside the caller's BEGIN IMMEDIATE, so concurrent openers migrate exactly once.
    Old seqs (counter values) are kept: they are far below any time-based seq, so each key's
    existing order holds and later writes sort after them.
    """
    cols = [r[1] for r in conn.execute("PRAGMA table_info(facets)").fetchall()]
    if "label" not in cols:
        return
    conn.execute("DROP TRIGGER IF EXISTS facets_write_rule")
    conn.execute("ALTER TABLE facets RENAME TO facets_v0")
    # Tables only: the write rule's trigger must not fire while old facets are copied.
    for stmt in _split_script(_FACETED_TABLES):
        conn.execute(stmt)
    conn.execute(
        "INSERT OR IGNORE INTO facet_labels (label) SELECT DISTINCT label FROM facets_v0 "
        "ORDER BY label"
    )
    conn.execute(
        "INSERT INTO facets (tbl, key, lid, seq, value) SELECT f.tbl, f.key, l.id, f.seq, "
        "f.value FROM facets_v0 AS f JOIN facet_labels AS l ON l.label = f.label"
    )
    conn.execute("DROP TABLE facets_v0")
    conn.execute("DROP TABLE IF EXISTS facet_seq")


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
