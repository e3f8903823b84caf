"""SQLite backends: the faceted store and the plain (IFC-off) baseline.

Layout. All facets live in one WITHOUT ROWID table ``facets(tbl, key, seq, lid, value, ...)``
clustered on ``(tbl, key, seq)``, so the facets of a key are adjacent and a newest-first walk
is a reverse range scan that stops at the first visible facet. Labels are interned in
``facet_labels(id, label)`` (rows never updated or deleted) and facets store the id. The
schema version is recorded in ``trapeze_schema`` (see ``_ensure_schema``).

Visibility without Python callbacks. Per reader label the store builds, from its snapshot of
``facet_labels``, a bit mask (or, past 63 label ids, a byte map) of the stored labels that flow
to the reader and binds it to the query: the per-row test is ``(mask >> lid) & 1``, evaluated
in C. Ids the snapshot does not know (labels another process interned since) pass the test,
and the query returns the lid with the row: the store then reloads the snapshot and asks
again, so answers never depend on how fresh the snapshot is. Ids are max(id) + 1 under the
write lock, never reused or deleted, so the snapshot grows incrementally: a reload reads only
the rows past it, and a cached map gains the new ids alone (``_LabelCache``), so a stream of
new labels does not make every caller rebuild a map over all stored labels.

seq is a hybrid timestamp: ``max(time.time_ns() of the writer, max seq of the key + 1)``,
decided under SQLite's write lock. The semantics only compare seqs of facets of the same key
(the write rule, the newest visible facet), and there seq is strictly increasing, guaranteed
whatever the clock does. Across keys seqs follow the wall clock but are not guaranteed
increasing or distinct (concurrent writers on different keys in the same microseconds, clock
steps). This replaced a store-wide counter row, which cost a second dirty page per commit.

The write rule (DESIGN §5) is one ``INSERT`` statement of the new facet, with seq = the
writer's clock, and a ``BEFORE INSERT`` trigger that deletes the key's facets whose label the
writer's label flows to, in one pass, testing each with the writer's upward bit mask, which
the INSERT carries in the new row. The same walk fails the statement if a facet's seq is not
below the new one (then the store writes again with seq computed from the key's max), and
hands label ids the writer's mask does not cover to Python. The walk starts at the seq of the
store's own last write at that label to that key, when it remembers one: every facet the rule
can remove is newer than that write. See ``_FACETED_TRIGGER`` for why each piece is there. One
statement in autocommit mode takes SQLite's write lock before it reads anything, so the rule
is atomic across threads and processes without an explicit transaction, and costs the same
number of round trips from Python as the plain store's upsert. The trigger needs the store's
SQL functions, so other tools (the ``sqlite3`` shell) can read the file but cannot write facets.

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
from operator import itemgetter
from urllib.parse import parse_qsl, unquote

from trapeze.errors import ConfigError, InvalidArgument, TrapezeError
from trapeze.labels import LabelError, Lattice
from trapeze.store.base import (
    MISSING,
    FacetedStore,
    PlainStore,
    extend_label_names,
    refuse_newer_schema,
)
from trapeze.store.sqlite_writer import WriterLock
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
    # SQLite's page cache per connection, in MiB; None keeps SQLite's default (2 MB).
    cache_mb: int | None = None


def parse_sqlite_url(url: str) -> SqliteConfig:
    """``sqlite:///abs/path.db`` or ``sqlite://rel/path.db``, with optional query
    ``?synchronous=normal|full|extra|off``, ``?busy_timeout=MILLISECONDS`` and
    ``?cache_mb=MIB`` (SQLite's page cache per connection)."""
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
    cache_mb: int | None = None
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
        elif name == "cache_mb":
            if not val.isdigit() or int(val) == 0:
                raise ConfigError(f"store URL: cache_mb={val!r}; use a number of MiB, like 64")
            cache_mb = int(val)
        else:
            raise ConfigError(
                f"store URL: unknown option {name!r}; known: synchronous, busy_timeout, "
                "cache_mb"
            )
    return SqliteConfig(path=path, synchronous=sync, busy_timeout_ms=busy, cache_mb=cache_mb)


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
        if cfg.cache_mb is not None:
            conn.execute(f"PRAGMA cache_size = {-1024 * int(cfg.cache_mb)}")  # < 0: KiB
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

# Version of the faceted tables in a SQLite file, recorded in trapeze_schema (the same table
# and component name as the PostgreSQL backend). 1 was the label-id layout without the
# write-rule columns; files without a trapeze_schema row are recognised by their columns.
FACETED_SCHEMA_VERSION = 2

_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS trapeze_schema (
    component TEXT PRIMARY KEY,
    version   INTEGER NOT NULL
)
"""

# Labels are interned: facets store a small integer ``lid`` instead of the label text, so that
# visibility can be decided inside SQLite without calling back into Python per row (see
# ``_LabelCache``). Rows of facet_labels are never updated or deleted, so an id, once read,
# names the same label forever, in every process.
#
# w_up, w_n and w_from are inputs of the write rule's trigger, written by the INSERT that
# adds the facet (a BEFORE trigger sees only the new row's columns; bound parameters cannot
# reach it): w_up is the writer's upward bit mask (bit i set iff the writer's label flows to
# label i) over the label ids 0 .. w_n - 1 that its snapshot knew, and w_from a seq from which
# on the trigger must look (see _FACETED_TRIGGER). They mean nothing once the row is in; the
# defaults make the trigger look at every facet of the key and ask the lattice about each.
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
    w_up   INTEGER NOT NULL DEFAULT 0,
    w_n    INTEGER NOT NULL DEFAULT 0,
    w_from INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tbl, key, seq)
) WITHOUT ROWID;
"""
# The write rule's removal half (_F_PUT fires it): the key's facets whose label the writer's
# label flows to, its own included. Deleting the writer's own facet and inserting anew (rather
# than updating it in place under a (tbl, key, lid) key) keeps the table in seq order, which
# is what lets get stop at the first visible facet.
#
# The DELETE's condition is built so that SQLite deletes in one pass: a subquery anywhere in
# it (as in version 1, which fetched the writer's map with (SELECT trapeze_above(...))) makes
# SQLite first collect the keys in a temporary b-tree and then delete, which cost more than
# the whole plain upsert. So the map comes from the new row (NEW.w_up), and a facet whose
# label id the writer's snapshot did not cover (lid >= w_n: interned by another process
# since) is decided by trapeze_write_rule(writer id, facet id) in Python, which raises if its
# own snapshot does not know the id either: the statement then fails, and the store reloads
# the labels and writes again. Stores with more label ids than fit a mask write w_up = w_n = 0
# and so ask Python about every facet the walk visits.
#
# The walk starts at seq w_from: the seq of an earlier write by the same label to the same
# key, which the store remembers (1, the whole key, when it does not). That is safe by the
# write rule itself: that write removed every facet at or above the writer's label, and seqs
# rise per key, so any such facet there now came later and has a larger seq. With the
# writer's own facet the newest (a label rewriting its key) the walk is one row, not all F.
#
# The same walk checks the new facet's seq. _F_PUT takes the writer's clock as seq instead of
# looking up the key's max(seq) first (a second b-tree descent, a tenth of a put); if a facet
# of the key, removed or kept, has a seq at least as large (the clock stood still or stepped
# back, or another process took its time first and committed first), trapeze_seq_taken()
# fails the statement and the store writes again with _F_PUT_AFTER, which computes max(clock,
# max seq + 1). Every write's seq thus exceeds every seq its key has ever had. (Such a facet
# is at or after w_from: the facet of the remembered write, or one newer that replaced it.)
# Rows inserted with w_from = 0 (the default: inserts by other tools, which choose their own
# seqs) skip the check; the store always writes w_from >= 1.
_FACETED_TRIGGER = """
CREATE TRIGGER IF NOT EXISTS facets_write_rule_v2 BEFORE INSERT ON facets
BEGIN
    DELETE FROM facets
     WHERE tbl = NEW.tbl AND key = NEW.key AND seq >= NEW.w_from
       AND ((seq >= NEW.seq AND NEW.w_from > 0 AND trapeze_seq_taken())
            OR (NEW.w_up >> lid) & 1
            OR (lid >= NEW.w_n AND trapeze_write_rule(NEW.lid, lid)));
END;
"""
_FACETED_SCHEMA = _FACETED_TABLES + _FACETED_TRIGGER


# Visibility of the facet in column `col` to the reader whose map is bound at `param`: an
# integer bit mask while there are at most _MASK_BITS label ids (bit i set iff label i flows
# to the reader; bits from the snapshot's size up are set too), else a byte string (byte i =
# 01 iff label i flows to the reader; ids past its end read as x'', also "set"). Either way a
# facet whose label the snapshot does not know passes, and the query returns its lid: the
# store then reloads the labels and asks again. So the per-row test is the one
# shift-and-mask (or substr) whatever happened since the snapshot, and only the rows visited
# pay for it.
def _vis(param: str, mask: bool, col: str = "lid") -> str:
    if mask:
        return f"({param} >> {col}) & 1"
    return f"substr({param}, {col} + 1, 1) <> x'00'"


# Each reader statement in both forms, indexed by "the map is a mask".
_MASKED = (False, True)
# Newest first along the primary key; stops at the first visible (or undecided) facet.
_F_GET = {
    m: "SELECT value, lid FROM facets WHERE tbl = ?1 AND key = ?2 AND "
    + _vis("?3", m)
    + " ORDER BY seq DESC LIMIT 1"
    for m in _MASKED
}
_F_FACETS = {
    m: "SELECT f.value, l.label, f.lid FROM facets AS f JOIN facet_labels AS l ON l.id = f.lid "
    "WHERE f.tbl = ?1 AND f.key = ?2 AND f.value IS NOT NULL AND "
    + _vis("?3", m, "f.lid")
    + " ORDER BY f.seq DESC"
    for m in _MASKED
}
# The write rule is this one statement (see the module docstring): ?4 is the writer's
# time.time_ns(), the new facet's seq unless the trigger finds it taken (see above); ?6..?8
# the trigger's w_up, w_n and w_from.
_F_PUT = (
    "INSERT INTO facets (tbl, key, lid, seq, value, w_up, w_n, w_from) "
    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
)
# The fallback: seq is computed in VALUES, before the BEFORE INSERT trigger deletes
# anything, so it exceeds every seq the key has ever had.
_F_PUT_AFTER = (
    "INSERT INTO facets (tbl, key, lid, seq, value, w_up, w_n, w_from) VALUES (?1, ?2, ?3, "
    "max(?4, coalesce((SELECT max(seq) FROM facets WHERE tbl = ?1 AND key = ?2), 0) + 1), "
    "?5, ?6, ?7, ?8)"
)
# The write statements, indexed by [returns the seq][computes seq after the key's max].
_F_PUTS = (
    (_F_PUT, _F_PUT_AFTER),
    (_F_PUT + " RETURNING seq", _F_PUT_AFTER + " RETURNING seq"),
)
# Bare columns of a max() aggregate come from the row holding the max (documented SQLite
# behaviour), so this yields each key's newest visible facet; GROUP BY follows the primary
# key, so rows stream in key order and LIMIT stops the walk early. Keys whose get would be
# None are skipped: tombstones (NULL) and the JSON null (text 'null'; a BLOB never equals it),
# unless the facet is undecided (?3 = the snapshot's size), which makes the store ask again.
# ({where} is filled in per call with the key range.)
_F_SCAN = {
    m: "SELECT key, value, max(seq), lid FROM facets WHERE {where} AND "
    + _vis("?2", m)
    + " GROUP BY key HAVING (value IS NOT NULL AND value IS NOT 'null') OR lid >= ?3"
    " ORDER BY key LIMIT ?4"
    for m in _MASKED
}
_F_RAW = (
    "SELECT f.seq, l.label, f.value FROM facets AS f JOIN facet_labels AS l ON l.id = f.lid "
    "WHERE f.tbl = ?1 AND f.key = ?2 ORDER BY f.seq DESC"
)
_F_TABLES = {
    m: "SELECT tbl, max(lid) FROM facets WHERE " + _vis("?1", m) + " GROUP BY tbl ORDER BY tbl"
    for m in _MASKED
}
# The rows a snapshot of n ids lacks (ids only grow: see _LabelCache).
_F_LABELS = "SELECT id, label FROM facet_labels WHERE id >= ?1"
# The lid column of _F_TABLES, _F_FACETS and _F_SCAN rows (C-level, for the undecided check).
_COL1, _COL2, _COL3 = itemgetter(1), itemgetter(2), itemgetter(3)
_F_INTERN = "INSERT OR IGNORE INTO facet_labels (label) VALUES (?1)"

# Maps cached per snapshot of facet_labels (readers, writers, upward maps), and the latest
# ones kept to carry over to the next snapshot; beyond this many labels a dict is emptied
# rather than grown (a byte map is one byte per stored label).
_MAX_CACHED_LABELS = 4096
# Label ids 0..62 fit an SQLite integer (signed 64-bit) as a bit mask.
_MASK_BITS = 63
# Seqs of the store's own last writes remembered per (table, key, label id), for w_from; the
# dict is emptied rather than grown beyond this (a forgotten key only costs a longer walk).
_MAX_WRITE_HINTS = 16384

# What a reader entry holds, per label and snapshot: the get statement, the visibility map
# bound to it, and the snapshot's size (a returned lid at or above it is undecided). A tuple,
# because get indexes it on every call.
_Reader = tuple[str, "int | bytes", int]
# A writer entry: label id, and the trigger's w_up and w_n (see _FACETED_TABLES).
_Writer = tuple[int, int, int]


class _LabelCache:
    """A snapshot of facet_labels and, per caller label, the maps derived from it.

    ``reader(l)`` is the visibility map of ``l`` (see ``_vis``); ``writer(l)`` the write
    rule's inputs for a writer at ``l``; ``above(i)`` the upward byte map of stored label i
    (byte j is 1 iff label i ⊑ label j). Ids are assigned as max(id) + 1 under SQLite's write
    lock and never reused, changed or deleted, so every id below ``n`` that will ever exist is
    in the snapshot, and a later snapshot only adds ids ≥ ``n``; a facet with an id ≥ ``n`` (a
    label another process interned since) is undecided here, and makes the store extend the
    snapshot (``extended``, with the rows from ``n`` on).

    Growth is incremental. A new snapshot copies the names and ids of the old one (no lattice
    call) and starts with empty entry dicts, so the hot path (one dict lookup) is unchanged;
    an entry missing there is carried over from the latest entry any snapshot of this store
    built for the label (``_known_*``, shared by the snapshots, each entry carrying the size it
    covers) by computing the ids it lacks only: a new label costs each caller label one
    ``flows`` call per map, when the label next calls, not one per stored label, and costs
    nothing for labels that do not call again.
    """

    def __init__(self, flows: Callable[[str, str], bool]) -> None:
        """The empty snapshot (before the first load)."""
        self.n = 0
        self.names: list[str | None] = []
        self.ids: dict[str, int] = {}
        self._flows = flows
        self.readers: dict[str, _Reader] = {}
        self.writers: dict[str, _Writer] = {}
        self.uppers: dict[int, bytes] = {}
        # The latest reader entry / upward map built for each label (id), whatever the
        # snapshot: a valid start for any snapshot, since names never change.
        self._known_readers: dict[str, _Reader] = {}
        self._known_uppers: dict[int, bytes] = {}

    def extended(self, rows: list[tuple[int, str]]) -> _LabelCache:
        """The snapshot that adds ``rows`` (rows of facet_labels with id ≥ ``n``) to this one."""
        new = _LabelCache(self._flows)
        new.n, new.names, new.ids = extend_label_names(self.n, self.names, self.ids, rows)
        new._known_readers = self._known_readers
        new._known_uppers = self._known_uppers
        return new

    def reader(self, label: str) -> _Reader:
        known = self._known_readers
        prev = known.get(label)
        if prev is not None and prev[2] >= self.n:
            entry = prev  # built by this or a later snapshot: it decides every id we know
        else:
            vis: int | bytes = 0
            lo = 0
            if prev is not None:
                vis, lo = prev[1], prev[2]
            vis = self._extend_vis(label, vis, lo)
            entry = (_F_GET[self.n <= _MASK_BITS], vis, self.n)
        if len(self.readers) >= _MAX_CACHED_LABELS:
            self.readers.clear()
        self.readers[label] = entry
        if len(known) >= _MAX_CACHED_LABELS:
            known.clear()
        known[label] = entry
        return entry

    def _extend_vis(self, label: str, vis: int | bytes, lo: int) -> int | bytes:
        """``vis``, the visibility map of ``label`` over ids 0 .. lo - 1, over 0 .. n - 1:
        one ``flows`` call per id from ``lo`` on."""
        hi = self.n
        flows = self._flows
        bits = [name is not None and flows(name, label) for name in self.names[lo:hi]]
        if hi <= _MASK_BITS:
            assert isinstance(vis, int)
            mask = vis & ((1 << lo) - 1)  # drop the "undecided" bits from lo up
            for i, bit in enumerate(bits, lo):
                if bit:
                    mask |= 1 << i
            # Bits hi.. set: facets with ids the snapshot does not know come back undecided.
            return mask | (-1 << hi)
        if isinstance(vis, int):  # the snapshot outgrew a mask: the same bits as bytes
            vis = bytes((vis >> i) & 1 for i in range(lo))
        return vis + bytes(bits)

    def writer(self, label: str, lid: int) -> _Writer:
        if len(self.writers) >= _MAX_CACHED_LABELS:
            self.writers.clear()
        entry: _Writer = (lid, 0, 0)  # too many ids for a mask: the trigger asks Python
        if self.n <= _MASK_BITS:
            up = self.above(lid)
            entry = (lid, sum(1 << i for i, bit in enumerate(up[: self.n]) if bit), self.n)
        self.writers[label] = entry
        return entry

    def above(self, lid: int) -> bytes:
        up = self.uppers.get(lid)
        if up is None:
            label = self.names[lid] if 0 <= lid < self.n else None
            if label is None:
                return b""  # unknown here: every facet is undecided
            known = self._known_uppers
            up = known.get(lid, b"")
            if len(up) < self.n:
                flows = self._flows
                up += bytes(name is not None and flows(label, name)
                            for name in self.names[len(up) : self.n])
            if len(self.uppers) >= _MAX_CACHED_LABELS:
                self.uppers.clear()
            self.uppers[lid] = up
            if len(known) >= _MAX_CACHED_LABELS:
                known.clear()
            known[lid] = up
        return up


class _Retry(Exception):
    """Raised inside SQLite by the write rule's trigger to make the store write again."""


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

        def write_rule_sql(writer: int, lid: int) -> bool:
            # Does a write by label id `writer` remove the facet at `lid`? Reached only for
            # ids past the writer's map (or for every facet when the store has too many ids
            # for masks). The latest snapshot may already know the id (another thread
            # reloaded); if not, fail the statement so that the store reloads and retries.
            up = self._cache.above(writer)
            if lid < len(up):
                return bool(up[lid])
            self._why.retry = "labels"
            self._why.lid = lid
            raise _Retry(lid)

        def seq_taken_sql() -> bool:
            self._why.retry = "seq"
            raise _Retry("seq")

        def flows_sql(a: str | None, b: str | None) -> bool:
            # Only for the write-rule trigger of schema version 1, which an older Trapeze
            # re-creates when it opens the file (see _ensure_schema); it decides correctly.
            return a is not None and b is not None and flows(a, b)

        def above_sql(lid: int) -> bytes:
            return self._cache.above(lid)  # likewise for the version 1 trigger

        def setup(conn: sqlite3.Connection) -> None:
            conn.create_function("trapeze_write_rule", 2, write_rule_sql)
            conn.create_function("trapeze_seq_taken", 0, seq_taken_sql)
            conn.create_function("trapeze_flows", 2, flows_sql, deterministic=True)
            conn.create_function("trapeze_above", 1, above_sql)

        self._flows = flows
        # Seqs of our own committed writes, per (table, key, label id): the trigger's w_from.
        self._hints: dict[tuple[str, str, int], int] = {}
        # Why the trigger failed this thread's last write (.retry): "labels"
        # (trapeze_write_rule met a label id, .lid, no snapshot knew: reload, write again) or "seq"
        # (trapeze_seq_taken: write again with _F_PUT_AFTER). Per thread: the SQL functions run
        # on the thread that executes the statement, and a reason read by another thread's
        # failed write would leave this one without its own.
        self._why = threading.local()
        self._conns = _Connections(config, setup)
        self._wlock = WriterLock(config.path, config.busy_timeout_ms / 1000)
        with self._wlock.transaction(self._conns.get()) as conn:
            _ensure_schema(conn, config.path)
        # Serialises the extension of the snapshot (not its use: readers never take it).
        self._reload_lock = threading.Lock()
        self._cache = _LabelCache(flows)
        self._readers = self._cache.readers
        self._writers = self._cache.writers
        self._load_labels()
        self.system = SystemTables(self._conns.get, lattice, self._wlock)

    def __repr__(self) -> str:
        return f"SqliteFacetedStore({self.config.path!r})"

    # -- label maps
    def _load_labels(self) -> _LabelCache:
        """Bring the snapshot up to date: read only the rows of facet_labels past it (ids are
        max + 1, never reused or deleted) and extend it with them; the maps of the labels
        already cached are carried over (see _LabelCache). Returns the current snapshot."""
        old = self._cache
        rows = self._conns.get().execute(_F_LABELS, (old.n,)).fetchall()
        with self._reload_lock:
            # Another thread may have extended it meanwhile, from an older or a newer read of
            # the table: both are prefixes of the same sequence of ids, so add what it lacks.
            cache = self._cache
            new = [row for row in rows if row[0] >= cache.n]
            if new:
                cache = cache.extended(new)
                # Readers index these dicts directly (one attribute lookup on the hot path);
                # they are replaced together with the snapshot, and every entry carries its own
                # snapshot size.
                self._cache = cache
                self._readers = cache.readers
                self._writers = cache.writers
            return cache

    def _reload_for(self, lid: int) -> None:
        """Reload the labels because a facet had id ``lid``, unknown to our snapshot."""
        if lid >= self._load_labels().n:
            raise TrapezeError(
                f"store file {self.config.path} is inconsistent: a facet has label id {lid}, "
                "which is not in facet_labels (check the file with integrity_check())"
            )

    def _reader(self, label: str) -> _Reader:
        """A reader label's entry for the current snapshot, validating the label once."""
        self.lattice.check(label)
        return self._cache.reader(label)

    def _writer(self, label: str) -> _Writer:
        """A writer label's entry, validating the label and interning it if new."""
        self.lattice.check(label)
        lid = self._cache.ids.get(label)
        if lid is None:
            # Its own autocommit statement, before the write's transaction: the row is
            # metadata only (harmless if the write then fails), and committed before any
            # process can see an id, so ids are never handed out twice.
            with self._wlock:
                self._conns.get().execute(_F_INTERN, (label,))
            lid = self._load_labels().ids[label]
        return self._cache.writer(label, lid)

    def _write(self, conn: sqlite3.Connection, returning: bool, table: str, key: str,
               label: str, stored: object, error: Exception | None = None) -> int | None:
        """Run the write rule's INSERT; ``error`` is how a first attempt failed, if it did.
        Returns the new seq when ``returning`` (else None).

        Writes again while the trigger asks for it (see _FACETED_TRIGGER): after reloading the
        labels, or with the seq computed from the key's max(seq)."""
        after = False
        while True:
            if error is not None:
                reason = getattr(self._why, "retry", None)
                self._why.retry = None
                if reason == "seq":
                    after = True
                elif reason == "labels":
                    # The id the trigger met: another thread may have extended the snapshot
                    # since, so only a snapshot that still lacks it means a broken file.
                    if self._load_labels().n <= getattr(self._why, "lid", -1):
                        raise TrapezeError(
                            f"store file {self.config.path} is inconsistent: a facet's label "
                            "id is not in facet_labels (check it with integrity_check())"
                        ) from error
                else:
                    raise error
            wr = self._writers.get(label) or self._writer(label)
            hint = (table, key, wr[0])
            try:
                cur = conn.execute(
                    _F_PUTS[returning][after],
                    (table, key, wr[0], time.time_ns(), stored, wr[1], wr[2],
                     self._hints.get(hint, 1)),
                )
            except sqlite3.OperationalError as exc:
                error = exc
                continue
            if not returning:
                return None
            seq = int(cur.fetchall()[0][0])
            if not conn.in_transaction:  # committed: a valid w_from from now on
                self._remember(hint, seq)
            return seq

    def _remember(self, hint: tuple[str, str, int], seq: int) -> None:
        """Note the seq of a committed write by label id hint[2] to key hint[:2] (w_from)."""
        hints = self._hints
        if len(hints) >= _MAX_WRITE_HINTS:
            hints.clear()
        hints[hint] = seq

    # -- reads
    def get(self, table: str, key: str, *, label: str) -> Value | None:
        check_table(table)
        check_key(key)
        rd = self._readers.get(label) or self._reader(label)
        rows = self._conns.get().execute(rd[0], (table, key, rd[1])).fetchall()
        if not rows:
            return None
        value, lid = rows[0]
        if lid >= rd[2]:
            self._reload_for(lid)
            return self.get(table, key, label=label)
        return decode_value(value)

    def facets(self, table: str, key: str, *, label: str) -> list[tuple[Value, str]]:
        check_table(table)
        check_key(key)
        while True:
            rd = self._readers.get(label) or self._reader(label)
            sql = _F_FACETS[type(rd[1]) is int]
            rows = self._conns.get().execute(sql, (table, key, rd[1])).fetchall()
            undecided = max(map(_COL2, rows), default=-1)
            if undecided < rd[2]:
                return [(decode_value(v), lab) for v, lab, _ in rows]
            self._reload_for(undecided)

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
        self._readers.get(label) or self._reader(label)  # validates the label first
        _check_bound("prefix", prefix)
        if start_after is not None:
            _check_bound("start_after", start_after)
        _check_limit(limit)
        while True:
            rd = self._readers.get(label) or self._reader(label)
            # Numbered parameters: ?1 table, ?2 map, ?3 snapshot size, ?4 limit, ?5.. range.
            conds = ["tbl = ?1"]
            params: list[object] = [table, rd[1], rd[2], limit]
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
            sql = _F_SCAN[type(rd[1]) is int].format(where=" AND ".join(conds))
            rows = self._conns.get().execute(sql, params).fetchall()
            undecided = max(map(_COL3, rows), default=-1)
            if undecided < rd[2]:
                return [(k, decode_value(v)) for k, v, _, _ in rows]
            self._reload_for(undecided)

    def tables(self, *, label: str) -> list[str]:
        while True:
            rd = self._readers.get(label) or self._reader(label)
            rows = self._conns.get().execute(_F_TABLES[type(rd[1]) is int], (rd[1],)).fetchall()
            undecided = max(map(_COL1, rows), default=-1)
            if undecided < rd[2]:
                return [r[0] for r in rows]
            self._reload_for(undecided)

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
        wr = self._writers.get(label) or self._writer(label)
        conn = self._conns.get()
        hint = (table, key, wr[0])
        seq = time.time_ns()
        # One statement in autocommit mode: atomic (it takes the write lock before reading),
        # and as many round trips as the plain store's upsert.
        with self._wlock:
            try:
                conn.execute(_F_PUT, (table, key, wr[0], seq, stored, wr[1], wr[2],
                                      self._hints.get(hint, 1)))
            except sqlite3.OperationalError as exc:
                self._write(conn, False, table, key, label, stored, exc)
                return True
        hints = self._hints  # committed, with seq = the clock reading: a valid w_from
        if len(hints) >= _MAX_WRITE_HINTS:
            hints.clear()
        hints[hint] = seq
        return True

    def delete(self, table: str, key: str, *, label: str) -> None:
        check_table(table)
        check_key(key)
        self._writers.get(label) or self._writer(label)  # validates the label
        with self._wlock:
            self._write(self._conns.get(), False, table, key, label, None)

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
        self._writers.get(label) or self._writer(label)  # interns a new label, committed
        conn = self._conns.get()
        with self._wlock:
            if expect is MISSING:
                return self._write(conn, True, table, key, label, stored)
            _begin_immediate(conn)
            try:
                # Inside the transaction: get's reload (if any) reads the latest facet_labels.
                current = self.get(table, key, label=label)
                if canonical(current) != want:
                    conn.execute("ROLLBACK")
                    return None
                seq = self._write(conn, True, table, key, label, stored)
                assert seq is not None
                conn.execute("COMMIT")
                self._remember((table, key, self._cache.ids[label]), seq)
                return seq
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        self._conns.close()


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})").fetchall()]


def _ensure_schema(conn: sqlite3.Connection, path: str) -> None:
    """Create or upgrade the faceted tables to FACETED_SCHEMA_VERSION.

    Runs inside the caller's BEGIN IMMEDIATE, so concurrent openers migrate exactly once. A
    file whose version is newer than ours is refused and left unchanged.
    """
    conn.execute(_VERSION_TABLE)
    row = conn.execute(
        "SELECT version FROM trapeze_schema WHERE component = 'faceted'"
    ).fetchone()
    have = None if row is None else int(row[0])
    refuse_newer_schema(have, FACETED_SCHEMA_VERSION,
                        f"the store file {path} holds faceted tables", "another file")
    _migrate_v0(conn)
    _migrate_v1(conn)
    for stmt in _split_script(_FACETED_SCHEMA):
        conn.execute(stmt)
    # Version 1's trigger, which an older Trapeze re-creates whenever it opens the file. Left
    # in place it would be correct but slow (both triggers run; it needs the trapeze_above
    # and trapeze_flows functions, which we still register for that reason), while the older
    # Trapeze's own writes fail: it lacks trapeze_write_rule.
    conn.execute("DROP TRIGGER IF EXISTS facets_write_rule_v1")
    if have != FACETED_SCHEMA_VERSION:
        conn.execute(
            "INSERT INTO trapeze_schema (component, version) VALUES ('faceted', ?1) "
            "ON CONFLICT (component) DO UPDATE SET version = excluded.version",
            (FACETED_SCHEMA_VERSION,),
        )


def _migrate_v0(conn: sqlite3.Connection) -> None:
    """Convert a file of the first layout (label text in facets, counter row facet_seq).

    Old seqs (counter values) are kept: they are far below any time-based seq, so each key's
    existing order holds and later writes sort after them.
    """
    if "label" not in _columns(conn, "facets"):
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


def _migrate_v1(conn: sqlite3.Connection) -> None:
    """Add the write-rule columns to a version 1 facets table (no rows are rewritten: old
    rows take the defaults, which only the trigger reads, and only for the inserted row)."""
    cols = _columns(conn, "facets")
    if cols and "w_up" not in cols:
        for col in ("w_up", "w_n", "w_from"):
            conn.execute(f"ALTER TABLE facets ADD COLUMN {col} INTEGER NOT NULL DEFAULT 0")


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
        # The same per-file writer queue as the faceted store (sqlite_writer.py).
        self._wlock = WriterLock(config.path, config.busy_timeout_ms / 1000)
        with self._wlock.transaction(self._conns.get()) as conn:
            for stmt in _split_script(_PLAIN_SCHEMA):
                conn.execute(stmt)
        self.system = SystemTables(self._conns.get, None, self._wlock)

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
            with self._wlock:
                conn.execute(_P_PUT, (table, key, stored))
            return True
        if expect is not None:
            encode_value(expect)
        want = canonical(expect)
        with self._wlock:
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
        with self._wlock:
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
