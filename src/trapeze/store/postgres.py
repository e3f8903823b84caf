"""PostgreSQL backends: the faceted store, the plain baseline and the system tables.

Same semantics as the SQLite backend (DESIGN §5, docs/store.md); what differs is how the
write rule is made atomic when writers run on several machines.

URL. ``postgresql://user:password@host:port/dbname?schema=NAME&pool_max=N`` plus any libpq
parameter (``sslmode``, ``connect_timeout``, ...). ``schema`` (default ``trapeze``) is the
PostgreSQL schema holding the store's tables, so several stores can share one database;
``pool_min``/``pool_max`` size the connection pool (psycopg_pool).

Layout. ``facets(tbl, key, seq, lid, jvalue, bvalue)`` with a unique index on
``(tbl, key, seq DESC)``: ``get`` is a forward index walk that stops at the first visible
facet and ``scan`` is ``DISTINCT ON (key)`` along the same index. JSON is kept as text (not
jsonb) because values come back with their object key order and ``1``/``1.0`` must stay
distinct. Text columns use the "C" collation so that keys sort by code point whatever the
database's locale. Labels are interned in ``facet_labels(id, label)`` with dense ids
0, 1, 2, ... allocated under a table lock (so ids are committed in order), never changed.

Visibility. As in SQLite, the reader binds a byte map (byte i = 1 iff label i ⊑ reader), built
in Python from the lattice over a snapshot of ``facet_labels``. PostgreSQL cannot call back
into Python, so a facet whose label id is beyond the map (interned elsewhere after our
snapshot) is *kept* by the query as "undecided" and returned with its id; the caller then
reloads the snapshot and asks again. Answers therefore never depend on the snapshot. A
reload reads only the rows past the snapshot and the cached maps gain the new ids alone
(``_Labels``), as in SQLite.

The write rule is one call of the PL/pgSQL function ``facet_put`` (one round trip, like the
plain store's upsert): it takes a transaction-scoped advisory lock on the key, which
serialises the key's writers on every machine even when the key has no row yet to lock (a
``SELECT ... FOR UPDATE`` cannot lock an absent row); then, under READ COMMITTED, each
following statement sees every write committed before the lock was granted: max(seq), the
deletion of the facets the writer's label flows to (the writer's upward byte map), the
insert. seq is the same hybrid timestamp as SQLite's: ``max(writer's time_ns, max seq of the
key + 1)``. If the key holds a facet whose label the writer's map does not cover, the
function writes nothing and returns NULL; the caller reloads and retries. Conditional puts
take the same lock in an explicit transaction, read, compare in Python (equality of stored
values is not SQL equality) and call ``facet_put``.

Schema. Created on first open in a transaction serialised by an advisory lock (concurrent
``CREATE ... IF NOT EXISTS`` can otherwise fail in PostgreSQL), with a version per component
in ``trapeze_schema``. A database written by a newer Trapeze is refused with both versions
named; an older one would be migrated step by step (there is only version 1 so far).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import psycopg_pool
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from trapeze.errors import ConfigError, InvalidArgument
from trapeze.labels import LabelError, Lattice
from trapeze.store.base import (
    MISSING,
    FacetedStore,
    PlainStore,
    extend_label_names,
    refuse_newer_schema,
)
from trapeze.store.sqlite import (
    StoreClosedError,
    _check_bound,
    _check_limit,
    _prefix_upper,
)
from trapeze.store.system import (
    AuditRecord,
    LogRecord,
    Principal,
    SystemTables,
    hash_token,
)
from trapeze.store.values import (
    Value,
    canonical,
    check_key,
    check_table,
    decode_value,
    encode_value,
)

# Versions of each component's tables that this code writes and reads.
SCHEMA_VERSIONS = {"faceted": 1, "plain": 1, "system": 1}

_OWN_OPTIONS = ("schema", "pool_min", "pool_max")
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class StoreUnavailableError(ConfigError):
    """The PostgreSQL server could not be reached (wrong host/port, server down, network)."""


class StoreAuthError(ConfigError):
    """The PostgreSQL server refused the user, the password or the database named."""


@dataclass(frozen=True)
class PostgresConfig:
    conninfo: str  # for libpq, our own options removed; may contain a password: never shown
    schema: str
    pool_min: int
    pool_max: int
    target: str  # "user@host:port/dbname", for messages (no password)


def parse_postgres_url(url: str) -> PostgresConfig:
    """Split our options (schema, pool_min, pool_max) from the libpq URL and check both."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("postgresql", "postgres"):
        raise ConfigError("not a postgresql URL (write postgresql://user@host:port/dbname)")
    schema, pool_min, pool_max = "trapeze", 1, 10
    rest: list[tuple[str, str]] = []
    for name, val in parse_qsl(parts.query, keep_blank_values=True):
        if name == "schema":
            if not _SCHEMA_NAME.fullmatch(val):
                raise ConfigError(
                    f"store URL: schema={val!r}; use a lower-case identifier "
                    "([a-z_][a-z0-9_]*, at most 63 characters)"
                )
            schema = val
        elif name in ("pool_min", "pool_max"):
            if not val.isdigit() or int(val) > 1000:
                raise ConfigError(f"store URL: {name}={val!r}; use a number of connections")
            if name == "pool_min":
                pool_min = int(val)
            else:
                pool_max = int(val)
        else:
            rest.append((name, val))
    if pool_max < 1 or pool_min > pool_max:
        raise ConfigError("store URL: need 1 <= pool_max and pool_min <= pool_max")
    # libpq waits forever for an unreachable host unless told otherwise.
    if not any(name == "connect_timeout" for name, _ in rest):
        rest.append(("connect_timeout", "10"))
    conninfo = urlunsplit(parts._replace(query=urlencode(rest)))
    try:
        info = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as exc:
        # libpq's own message names the bad parameter; the URL may hold a password.
        raise ConfigError(f"store URL is not a valid PostgreSQL URL: {exc}") from None
    host = info.get("host") or info.get("hostaddr") or "(default unix socket)"
    target = f"{info.get('user') or '(default user)'}@{host}:{info.get('port') or 5432}" \
             f"/{info.get('dbname') or '(default database)'}"
    return PostgresConfig(str(conninfo), schema, pool_min, pool_max, target)


def _connect_error(exc: psycopg.OperationalError, cfg: PostgresConfig) -> ConfigError:
    """A clear error for a failed connection: unreachable, or refused credentials."""
    # libpq's text (refused, timed out, unknown host, the server's FATAL line) on one line.
    text = str(exc)
    reason = " ".join(part.strip() for part in text.split()) or type(exc).__name__
    reason = reason.removeprefix("connection failed:").strip().rstrip(".")
    if "password authentication failed" in text or "no password supplied" in text or (
        "role" in text and "does not exist" in text
    ) or "pg_hba.conf" in text:
        return StoreAuthError(
            f"PostgreSQL at {cfg.target} refused the credentials: {reason}. Check the user "
            "and password in the store URL (and the server's pg_hba.conf)."
        )
    if "database" in text and "does not exist" in text:
        return StoreAuthError(
            f"PostgreSQL at {cfg.target}: {reason}. Create it (createdb) or fix the database "
            "name in the store URL."
        )
    return StoreUnavailableError(
        f"cannot connect to PostgreSQL at {cfg.target}: {reason} -- hint: check the host "
        "and port in the store URL; the server must be running and listening there "
        "(listen_addresses, firewall)"
    )


def _configure(conn: psycopg.Connection[Any]) -> None:
    # The write rule relies on READ COMMITTED: each statement after the key's lock sees all
    # writes committed before it. A server or role default of REPEATABLE READ would make the
    # statements read the snapshot taken before the lock was granted.
    conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED")


class _Pool:
    """The connection pool, plus the errors and the closed state the stores need."""

    def __init__(self, cfg: PostgresConfig, setup: Callable[[psycopg.Connection[Any]], None]):
        self.cfg = cfg
        self.closed = False
        # A direct connection first: its failure carries libpq's reason (refused, timeout,
        # bad password), where a pool would only report a timeout.
        try:
            conn = psycopg.connect(cfg.conninfo, autocommit=True)
        except psycopg.OperationalError as exc:
            raise _connect_error(exc, cfg) from None
        try:
            encoding = conn.execute("SHOW server_encoding").fetchone()
            if not encoding or encoding[0].upper() not in ("UTF8", "UTF-8"):
                raise ConfigError(
                    f"PostgreSQL database {cfg.target} has encoding {encoding}; the store "
                    "needs UTF8 (createdb -E UTF8)"
                )
            _configure(conn)
            setup(conn)
        finally:
            conn.close()
        self.pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] = (
            psycopg_pool.ConnectionPool(
                cfg.conninfo,
                min_size=cfg.pool_min,
                max_size=cfg.pool_max,
                kwargs={"autocommit": True},
                configure=_configure,
                open=False,
                name=f"trapeze-store {cfg.target}",
            )
        )
        self.pool.open(wait=False)

    @contextmanager
    def conn(self) -> Iterator[psycopg.Connection[Any]]:
        if self.closed:
            raise StoreClosedError("the store is closed")
        try:
            with self.pool.connection() as conn:
                yield conn
        except psycopg_pool.PoolTimeout:
            raise StoreUnavailableError(
                f"no connection to PostgreSQL at {self.cfg.target} within the pool timeout "
                "(server down, or all pool_max connections busy)"
            ) from None
        except psycopg_pool.PoolClosed:
            raise StoreClosedError("the store is closed") from None

    def close(self) -> None:
        self.closed = True
        self.pool.close()


# ------------------------------------------------------------------------------ schema DDL

_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS {s}.trapeze_schema (
    component text PRIMARY KEY,
    version   integer NOT NULL
)"""

_FACETED_DDL = [
    """CREATE TABLE {s}.facet_labels (
        id    integer PRIMARY KEY,
        label text COLLATE "C" NOT NULL UNIQUE
    )""",
    # jvalue: JSON text; bvalue: bytes; both NULL: a tombstone.
    """CREATE TABLE {s}.facets (
        tbl    text COLLATE "C" NOT NULL,
        key    text COLLATE "C" NOT NULL,
        seq    bigint  NOT NULL,
        lid    integer NOT NULL,
        jvalue text,
        bvalue bytea,
        CHECK (jvalue IS NULL OR bvalue IS NULL)
    )""",
    # Newest first per key: get stops at the first visible facet, scan's DISTINCT ON (key)
    # walks it in order. Also makes two facets of a key sharing a seq impossible.
    "CREATE UNIQUE INDEX facets_key_seq ON {s}.facets (tbl, key, seq DESC)",
    # Dense ids committed in order: the table lock (self-conflicting, readers unaffected) is
    # held until commit, so no id becomes visible before a smaller one. Rare: once per label.
    """CREATE FUNCTION {s}.facet_intern(p_label text) RETURNS integer
    LANGUAGE plpgsql AS $$
    DECLARE r integer;
    BEGIN
        LOCK TABLE {s}.facet_labels IN SHARE ROW EXCLUSIVE MODE;
        INSERT INTO {s}.facet_labels (id, label)
            SELECT coalesce(max(id) + 1, 0), p_label FROM {s}.facet_labels
            ON CONFLICT (label) DO NOTHING;
        SELECT id INTO r FROM {s}.facet_labels WHERE label = p_label;
        RETURN r;
    END $$""",
    # The write rule (module docstring). Each statement of a VOLATILE PL/pgSQL function gets
    # a fresh snapshot under READ COMMITTED, so everything after the lock sees the previous
    # holder's commit. p_above: byte i = 1 iff the writer's label flows to label i.
    """CREATE FUNCTION {s}.facet_put(p_tbl text, p_key text, p_lid integer, p_now bigint,
                                      p_j text, p_b bytea, p_above bytea) RETURNS bigint
    LANGUAGE plpgsql AS $$
    DECLARE
        top bigint;
        undecided boolean;
        new_seq bigint;
    BEGIN
        PERFORM pg_advisory_xact_lock(hashtext(p_tbl), hashtext(p_key));
        SELECT max(seq), bool_or(lid >= length(p_above)) INTO top, undecided
          FROM {s}.facets WHERE tbl = p_tbl AND key = p_key;
        IF undecided THEN
            RETURN NULL;  -- a label newer than the caller's map: it reloads and retries
        END IF;
        DELETE FROM {s}.facets
         WHERE tbl = p_tbl AND key = p_key
           AND CASE WHEN lid < length(p_above) THEN get_byte(p_above, lid) = 1 ELSE false END;
        new_seq := greatest(p_now, coalesce(top, 0) + 1);
        INSERT INTO {s}.facets (tbl, key, seq, lid, jvalue, bvalue)
             VALUES (p_tbl, p_key, new_seq, p_lid, p_j, p_b);
        RETURN new_seq;
    END $$""",
]

_PLAIN_DDL = [
    """CREATE TABLE {s}.kv (
        tbl    text COLLATE "C" NOT NULL,
        key    text COLLATE "C" NOT NULL,
        jvalue text,
        bvalue bytea,
        PRIMARY KEY (tbl, key),
        CHECK ((jvalue IS NULL) <> (bvalue IS NULL))
    )""",
]

_SYSTEM_DDL = [
    """CREATE TABLE {s}.sys_principals (
        id        text COLLATE "C" PRIMARY KEY,
        clearance text NOT NULL,
        created   double precision NOT NULL
    )""",
    """CREATE TABLE {s}.sys_tokens (
        hash      text PRIMARY KEY,
        principal text COLLATE "C" NOT NULL
                  REFERENCES {s}.sys_principals (id) ON DELETE CASCADE,
        created   double precision NOT NULL,
        expires   double precision
    )""",
    "CREATE INDEX sys_tokens_principal ON {s}.sys_tokens (principal)",
    """CREATE TABLE {s}.sys_audit (
        seq        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        time       double precision NOT NULL,
        kind       text NOT NULL,
        function   text,
        request_id text,
        label      text,
        detail     text NOT NULL
    )""",
    "CREATE INDEX sys_audit_kind ON {s}.sys_audit (kind, seq)",
    """CREATE TABLE {s}.sys_logs (
        seq        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        time       double precision NOT NULL,
        function   text NOT NULL,
        request_id text NOT NULL,
        label      text NOT NULL,
        text       text NOT NULL
    )""",
    "CREATE INDEX sys_logs_request ON {s}.sys_logs (request_id, seq)",
    # Append-only enforced by the database, as in SQLite (and TRUNCATE too, which bypasses
    # row triggers).
    """CREATE FUNCTION {s}.sys_audit_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$""",
    """CREATE TRIGGER sys_audit_no_change BEFORE UPDATE OR DELETE ON {s}.sys_audit
       FOR EACH ROW EXECUTE FUNCTION {s}.sys_audit_refuse()""",
    """CREATE TRIGGER sys_audit_no_truncate BEFORE TRUNCATE ON {s}.sys_audit
       FOR EACH STATEMENT EXECUTE FUNCTION {s}.sys_audit_refuse()""",
    # Appends hold a self-conflicting table lock until commit, so seqs become visible in
    # order and a reader paging with since_seq never skips a row committed late with a
    # smaller seq (identity values alone are handed out before commit, out of order).
    """CREATE FUNCTION {s}.sys_append(p_audit boolean, p_time double precision, p_kind text,
                                      p_function text, p_request text, p_label text,
                                      p_text text) RETURNS bigint
    LANGUAGE plpgsql AS $$
    DECLARE r bigint;
    BEGIN
        IF p_audit THEN
            LOCK TABLE {s}.sys_audit IN SHARE ROW EXCLUSIVE MODE;
            INSERT INTO {s}.sys_audit (time, kind, function, request_id, label, detail)
                 VALUES (p_time, p_kind, p_function, p_request, p_label, p_text)
                 RETURNING seq INTO r;
        ELSE
            LOCK TABLE {s}.sys_logs IN SHARE ROW EXCLUSIVE MODE;
            INSERT INTO {s}.sys_logs (time, function, request_id, label, text)
                 VALUES (p_time, p_function, p_request, p_label, p_text)
                 RETURNING seq INTO r;
        END IF;
        RETURN r;
    END $$""",
]

_DDL = {"faceted": _FACETED_DDL, "plain": _PLAIN_DDL, "system": _SYSTEM_DDL}
# Steps from version v to v + 1, per component, when a schema change comes.
_MIGRATIONS: dict[tuple[str, int], list[str]] = {}


def _q(template: str, schema: str) -> str:
    """Fill the schema identifier (quoted by psycopg) into a statement; data stays bound."""
    ident = sql.Identifier(schema).as_string(None)
    return template.replace("{s}", ident)


def _ensure_schema(conn: psycopg.Connection[Any], schema: str, components: Iterable[str],
                   target: str, *, versions: Mapping[str, int] = SCHEMA_VERSIONS,
                   ddl: Mapping[str, list[str]] = _DDL,
                   migrations: Mapping[tuple[str, int], list[str]] = _MIGRATIONS) -> None:
    """Create or migrate the components' tables; refuse a schema from a newer version.

    `versions`/`ddl`/`migrations` describe the components: the store's by default; the
    engine tables (trapeze.runtime.engine_store.postgres) pass their own.
    """
    with conn.transaction():
        # Concurrent openers of a fresh database would race on CREATE (PostgreSQL's IF NOT
        # EXISTS is not safe against that); one at a time per schema.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('trapeze-ddl'), hashtext(%s))",
                     (schema,))
        exists = conn.execute(
            "SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)
        ).fetchone()
        if not exists:
            conn.execute(_q("CREATE SCHEMA {s}", schema))
        conn.execute(_q(_VERSION_TABLE, schema))
        for comp in components:
            row = conn.execute(
                _q("SELECT version FROM {s}.trapeze_schema WHERE component = %s", schema),
                (comp,),
            ).fetchone()
            ours = versions[comp]
            have = None if row is None else int(row[0])
            refuse_newer_schema(have, ours, f"the store schema {schema!r} in {target} holds "
                                f"{comp} tables", "another database or schema")
            if have is None:
                for stmt in ddl[comp]:
                    conn.execute(_q(stmt, schema))
            else:
                for v in range(have, ours):
                    for stmt in migrations[(comp, v)]:
                        conn.execute(_q(stmt, schema))
            if have != ours:
                conn.execute(
                    _q("INSERT INTO {s}.trapeze_schema (component, version) VALUES (%s, %s) "
                       "ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version",
                       schema),
                    (comp, ours),
                )


def _split_value(stored: str | bytes | None) -> tuple[str | None, bytes | None]:
    if stored is None:
        return None, None
    if isinstance(stored, str):
        return stored, None
    return None, bytes(stored)


def _join_value(jvalue: str | None, bvalue: bytes | None) -> Value:
    return decode_value(jvalue if bvalue is None else bvalue)


# ---------------------------------------------------------------------------------- faceted


# Label maps memoised per snapshot (and carried over); emptied rather than grown beyond this
# many labels (a map is one byte per stored label).
_MAX_CACHED_LABELS = 4096


class _Labels:
    """One snapshot of facet_labels with the maps derived from it (never mutated but for
    the memo dicts, whose races only recompute a value).

    Ids are dense from 0 and committed in order (facet_intern), never changed or deleted, so a
    later snapshot only adds ids ≥ ``n``: ``extended`` builds it from this one and the rows
    from ``n`` on. The maps are carried over lazily, as in SQLite's ``_LabelCache``: a new
    snapshot starts with empty memo dicts, and a label's map is the latest one any snapshot of
    this store built for it (``_known_*``, shared) extended by one ``flows`` call per id it
    lacks, not rebuilt with one per stored label.
    """

    def __init__(self, flows: Callable[[str, str], bool]) -> None:
        """The empty snapshot (before the first load)."""
        self.n = 0
        self.names: list[str | None] = []
        self.ids: dict[str, int] = {}
        self._flows = flows
        self.readers: dict[str, bytes] = {}
        self.uppers: dict[str, bytes] = {}
        self._known_readers: dict[str, bytes] = {}
        self._known_uppers: dict[str, bytes] = {}

    def extended(self, rows: list[tuple[int, str]]) -> _Labels:
        """The snapshot that adds ``rows`` (rows of facet_labels with id ≥ ``n``) to this one."""
        new = _Labels(self._flows)
        new.n, new.names, new.ids = extend_label_names(self.n, self.names, self.ids, rows)
        new._known_readers = self._known_readers
        new._known_uppers = self._known_uppers
        return new

    def reader(self, label: str) -> bytes:
        m = self.readers.get(label)
        if m is None:
            m = self._carry(self.readers, self._known_readers, label, False)
        return m

    def upper(self, label: str) -> bytes:
        m = self.uppers.get(label)
        if m is None:
            m = self._carry(self.uppers, self._known_uppers, label, True)
        return m

    def _carry(self, memo: dict[str, bytes], known: dict[str, bytes], label: str,
               up: bool) -> bytes:
        """``label``'s map (byte i: label i ⊑ label, or label ⊑ label i when ``up``) over this
        snapshot: the latest one built, extended by the ids it lacks."""
        m = known.get(label, b"")
        n = self.n
        if len(m) < n:  # a longer one (from a later snapshot) is as good
            f = self._flows
            new = self.names[len(m) : n]
            if up:
                m += bytes(name is not None and f(label, name) for name in new)
            else:
                m += bytes(name is not None and f(name, label) for name in new)
        # Bound memory if labels are per-user and many.
        if len(memo) >= _MAX_CACHED_LABELS:
            memo.clear()
        memo[label] = m
        if len(known) >= _MAX_CACHED_LABELS:
            known.clear()
        known[label] = m
        return m


# "Visible or undecided" for the facet in column lid, with the reader's map bound as %(m)s.
# CASE, not AND/OR: PostgreSQL does not promise to evaluate the bound check first.
_VIS = "CASE WHEN {lid} < length(%(m)s) THEN get_byte(%(m)s, {lid}) = 1 ELSE true END"
_F_GET = (
    "SELECT jvalue, bvalue, lid FROM {s}.facets WHERE tbl = %(t)s AND key = %(k)s AND "
    + _VIS.format(lid="lid") + " ORDER BY seq DESC LIMIT 1"
)
_F_FACETS = (
    "SELECT f.jvalue, f.bvalue, l.label, f.lid FROM {s}.facets AS f "
    "LEFT JOIN {s}.facet_labels AS l ON l.id = f.lid WHERE f.tbl = %(t)s AND f.key = %(k)s "
    "AND " + _VIS.format(lid="f.lid") + " ORDER BY f.seq DESC"
)
# Each key's newest visible-or-undecided facet, in key order; keys whose get is None are
# skipped (tombstones, JSON null) unless undecided, which the caller resolves by retrying.
_F_SCAN = (
    "SELECT key, jvalue, bvalue, lid FROM (SELECT DISTINCT ON (key) key, jvalue, bvalue, lid "
    "FROM {s}.facets WHERE {where} AND " + _VIS.format(lid="lid")
    + " ORDER BY key, seq DESC) AS newest WHERE lid >= length(%(m)s) OR bvalue IS NOT NULL "
    "OR jvalue <> 'null' ORDER BY key LIMIT %(limit)s"
)
_F_TABLES = (
    "SELECT tbl, bool_or(lid >= length(%(m)s)) FROM {s}.facets WHERE "
    + _VIS.format(lid="lid") + " GROUP BY tbl ORDER BY tbl"
)
_F_RAW = (
    "SELECT f.seq, l.label, f.jvalue, f.bvalue FROM {s}.facets AS f "
    "LEFT JOIN {s}.facet_labels AS l ON l.id = f.lid "
    "WHERE f.tbl = %s AND f.key = %s ORDER BY f.seq DESC"
)
_F_PUT = "SELECT {s}.facet_put(%s, %s, %s, %s, %s, %s, %s)"
_F_LOCK = "SELECT pg_advisory_xact_lock(hashtext(%s), hashtext(%s))"
# The rows a snapshot of n ids lacks (ids are dense and only grow: see _Labels).
_F_LABELS = "SELECT id, label FROM {s}.facet_labels WHERE id >= %s ORDER BY id"
_F_INTERN = "SELECT {s}.facet_intern(%s)"
# integrity_check: what must hold whatever the lattice (the write rule itself needs it and is
# checked by the tests on raw_facets).
_F_CHECKS = [
    ("facets whose label id is not interned",
     "SELECT count(*) FROM {s}.facets AS f WHERE NOT EXISTS "
     "(SELECT 1 FROM {s}.facet_labels AS l WHERE l.id = f.lid)"),
    ("keys holding two facets with the same label",
     "SELECT count(*) FROM (SELECT 1 FROM {s}.facets GROUP BY tbl, key, lid "
     "HAVING count(*) > 1) AS d"),
    ("label ids that are not dense from 0",
     "SELECT count(*) FROM {s}.facet_labels WHERE id < 0 OR id >= "
     "(SELECT count(*) FROM {s}.facet_labels)"),
]

# Each retry follows a reload of the label snapshot; only a label interned by another
# process between the reload and the query causes another. Bounded to surface a bug, not a
# livelock.
_MAX_RETRIES = 100


class PostgresFacetedStore(FacetedStore):
    def __init__(self, config: PostgresConfig, lattice: Lattice) -> None:
        self.config = config
        self.lattice = lattice
        lat_flows = lattice.flows

        def flows(a: str, b: str) -> bool:
            try:
                return lat_flows(a, b)
            except LabelError:
                # A label an older manifest knew: invisible to every reader, removed by no
                # writer (docs/store.md), as in the SQLite backend.
                return False

        self._flows = flows
        s = config.schema
        self._sql = {
            name: _q(text, s) for name, text in {
                "get": _F_GET, "facets": _F_FACETS, "scan": _F_SCAN, "tables": _F_TABLES,
                "raw": _F_RAW, "put": _F_PUT, "labels": _F_LABELS, "intern": _F_INTERN,
            }.items()
        }
        self._pool = _Pool(
            config, lambda c: _ensure_schema(c, s, ("faceted", "system"), config.target)
        )
        self._reload_lock = threading.Lock()
        self._cache = _Labels(flows)
        self._load_labels()
        self.system = PostgresSystemTables(self._pool, lattice)

    def __repr__(self) -> str:
        return f"PostgresFacetedStore({self.config.target!r}, schema={self.config.schema!r})"

    # -- label snapshot
    def _load_labels(self, conn: psycopg.Connection[Any] | None = None) -> _Labels:
        """Bring the snapshot up to date: read only the rows of facet_labels past it and
        extend it with them (see _Labels). Returns the current snapshot.

        A caller that holds a pooled connection passes it: taking a second one could wait
        for a pool that has none left (held by writers in the same situation), and whether a
        write then failed would depend on whether its key held a facet with a label new to
        this process, a higher facet's existence (review, session 7). Read committed: the
        query sees the label rows committed before it, inside a transaction too."""
        old = self._cache
        if conn is None:
            with self._pool.conn() as c:
                rows = c.execute(self._sql["labels"], (old.n,)).fetchall()
        else:
            rows = conn.execute(self._sql["labels"], (old.n,)).fetchall()
        with self._reload_lock:
            # Another thread may have extended it meanwhile, from an older or a newer read of
            # the table: both are prefixes of the same sequence of ids, so add what it lacks.
            # (Not the query under the lock: a thread holding a pooled connection in a
            # conditional put may wait for it.)
            cache = self._cache
            new = [(int(i), str(lab)) for i, lab in rows if int(i) >= cache.n]
            if new:
                cache = cache.extended(new)
                self._cache = cache
            return cache

    def _reader_map(self, label: str) -> bytes:
        cache = self._cache
        m = cache.readers.get(label)
        if m is None:
            self.lattice.check(label)  # once per label per snapshot, as in SQLite
            m = cache.reader(label)
        return m

    def _writer(self, label: str) -> tuple[int, bytes]:
        """Validate a writer label, interning it if new: its id and upward map."""
        cache = self._cache
        lid = cache.ids.get(label)
        if lid is None:
            self.lattice.check(label)
            # Its own committed statement before the write, as in SQLite: harmless if the
            # write then fails, and visible to every process before any facet uses it.
            with self._pool.conn() as conn:
                conn.execute(self._sql["intern"], (label,))
            cache = self._load_labels()
            lid = cache.ids[label]
        return lid, cache.upper(label)

    def _read(self, name: str, params: dict[str, Any], lid_col: int,
              conn: psycopg.Connection[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run a reader query with the reader's map, reloading until no row is undecided."""
        label = params.pop("label")
        for _ in range(_MAX_RETRIES):
            m = self._reader_map(label)
            params["m"] = m
            if conn is None:
                with self._pool.conn() as c:
                    rows = c.execute(self._sql[name], params).fetchall()
            else:
                rows = conn.execute(self._sql[name], params).fetchall()
            # A row whose label id is beyond the map is undecided (see the module docstring).
            if all(r[lid_col] < len(m) for r in rows):
                return rows
            self._load_labels(conn)
        raise RuntimeError("label snapshot kept changing during a read")

    # -- reads
    def get(self, table: str, key: str, *, label: str) -> Value | None:
        check_table(table)
        check_key(key)
        rows = self._read("get", {"t": table, "k": key, "label": label}, 2)
        return _join_value(rows[0][0], rows[0][1]) if rows else None

    def _get_in(self, conn: psycopg.Connection[Any], table: str, key: str,
                label: str) -> Value | None:
        rows = self._read("get", {"t": table, "k": key, "label": label}, 2, conn)
        return _join_value(rows[0][0], rows[0][1]) if rows else None

    def facets(self, table: str, key: str, *, label: str) -> list[tuple[Value, str]]:
        check_table(table)
        check_key(key)
        rows = self._read("facets", {"t": table, "k": key, "label": label}, 3)
        return [(_join_value(j, b), lab) for j, b, lab, _ in rows
                if j is not None or b is not None]

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
        _check_bound("prefix", prefix)
        if start_after is not None:
            _check_bound("start_after", start_after)
        _check_limit(limit)
        conds = ["tbl = %(t)s"]
        params: dict[str, Any] = {"t": table, "label": label, "limit": limit}
        if prefix:
            conds.append("key >= %(lo)s")
            params["lo"] = prefix
            upper = _prefix_upper(prefix)
            if upper is not None:
                conds.append("key < %(hi)s")
                params["hi"] = upper
        if start_after is not None:
            conds.append("key > %(after)s")
            params["after"] = start_after
        name = "scan:" + " AND ".join(conds)
        if name not in self._sql:  # a handful of shapes; the conditions are fixed text
            self._sql[name] = self._sql["scan"].replace("{where}", " AND ".join(conds))
        rows = self._read(name, params, 3)
        return [(k, _join_value(j, b)) for k, j, b, _ in rows]

    def tables(self, *, label: str) -> list[str]:
        for _ in range(_MAX_RETRIES):
            m = self._reader_map(label)
            with self._pool.conn() as conn:
                rows = conn.execute(self._sql["tables"], {"m": m}).fetchall()
            if not any(undecided for _, undecided in rows):
                return [t for t, _ in rows]
            self._load_labels()
        raise RuntimeError("label snapshot kept changing during a read")

    def raw_facets(self, table: str, key: str) -> list[tuple[int, str, Value, bool]]:
        with self._pool.conn() as conn:
            rows = conn.execute(self._sql["raw"], (table, key)).fetchall()
        return [(int(s), lab, _join_value(j, b), j is None and b is None)
                for s, lab, j, b in rows]

    def integrity_check(self) -> list[str]:
        """Consistency of the store's tables (["ok"] when sound); the crash test uses it."""
        problems = []
        with self._pool.conn() as conn:
            for what, query in _F_CHECKS:
                row = conn.execute(_q(query, self.config.schema)).fetchone()
                if row and row[0]:
                    problems.append(f"{row[0]} {what}")
        return problems or ["ok"]

    # -- writes
    def put(
        self, table: str, key: str, value: Value, *, label: str, expect: object = MISSING
    ) -> bool:
        return self.put_seq(table, key, value, label=label, expect=expect) is not None

    def delete(self, table: str, key: str, *, label: str) -> None:
        self.put_seq(table, key, None, label=label, tombstone=True)

    def _put_in(self, conn: psycopg.Connection[Any], table: str, key: str, label: str,
                jvalue: str | None, bvalue: bytes | None) -> int:
        for _ in range(_MAX_RETRIES):
            lid, above = self._writer(label)
            row = conn.execute(
                self._sql["put"], (table, key, lid, time.time_ns(), jvalue, bvalue, above)
            ).fetchone()
            if row is not None and row[0] is not None:
                return int(row[0])
            self._load_labels(conn)  # the key holds a label newer than our map
        raise RuntimeError("label snapshot kept changing during a write")

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
        jvalue, bvalue = _split_value(None if tombstone else encode_value(value))
        want: object = None
        if expect is not MISSING:
            if expect is not None:
                encode_value(expect)
            want = canonical(expect)
        # A label new to the store is interned now, on a connection of its own and before
        # the write takes one (see _load_labels): the write itself never needs a second.
        self._writer(label)
        if expect is MISSING:
            with self._pool.conn() as conn:
                return self._put_in(conn, table, key, label, jvalue, bvalue)
        with self._pool.conn() as conn, conn.transaction():
            # The same key lock facet_put takes (re-entrant within the transaction): no
            # writer of this key, anywhere, commits between our read and our write.
            conn.execute(_F_LOCK, (table, key))
            if canonical(self._get_in(conn, table, key, label)) != want:
                return None
            return self._put_in(conn, table, key, label, jvalue, bvalue)

    def close(self) -> None:
        self._pool.close()


# ------------------------------------------------------------------------------------ plain

_P_GET = "SELECT jvalue, bvalue FROM {s}.kv WHERE tbl = %s AND key = %s"
_P_GET_LOCKED = _P_GET + " FOR UPDATE"
_P_PUT = (
    "INSERT INTO {s}.kv (tbl, key, jvalue, bvalue) VALUES (%s, %s, %s, %s) "
    "ON CONFLICT (tbl, key) DO UPDATE SET jvalue = EXCLUDED.jvalue, bvalue = EXCLUDED.bvalue"
)
_P_INSERT_NEW = (
    "INSERT INTO {s}.kv (tbl, key, jvalue, bvalue) VALUES (%s, %s, %s, %s) "
    "ON CONFLICT (tbl, key) DO NOTHING"
)
_P_DELETE = "DELETE FROM {s}.kv WHERE tbl = %s AND key = %s"
_P_SCAN = (
    "SELECT key, jvalue, bvalue FROM {s}.kv WHERE {where} "
    "AND (jvalue IS NULL OR jvalue <> 'null') ORDER BY key LIMIT %s"
)
_P_TABLES = "SELECT DISTINCT tbl FROM {s}.kv ORDER BY tbl"


class PostgresPlainStore(PlainStore):
    """One value per key, no labels: the baseline, with the faceted store's encoding."""

    def __init__(self, config: PostgresConfig) -> None:
        self.config = config
        s = config.schema
        self._sql = {n: _q(t, s) for n, t in {
            "get": _P_GET, "get_locked": _P_GET_LOCKED, "put": _P_PUT, "new": _P_INSERT_NEW,
            "delete": _P_DELETE, "tables": _P_TABLES}.items()}
        self._pool = _Pool(
            config, lambda c: _ensure_schema(c, s, ("plain", "system"), config.target)
        )
        self.system = PostgresSystemTables(self._pool, None)

    def __repr__(self) -> str:
        return f"PostgresPlainStore({self.config.target!r}, schema={self.config.schema!r})"

    def get(self, table: str, key: str, *, label: str = "") -> Value | None:
        check_table(table)
        check_key(key)
        with self._pool.conn() as conn:
            row = conn.execute(self._sql["get"], (table, key)).fetchone()
        return _join_value(row[0], row[1]) if row else None

    def facets(self, table: str, key: str, *, label: str = "") -> list[tuple[Value, str]]:
        value = self.get(table, key, label=label)
        return [] if value is None else [(value, label)]

    def put(
        self, table: str, key: str, value: Value, *, label: str = "", expect: object = MISSING
    ) -> bool:
        check_table(table)
        check_key(key)
        jvalue, bvalue = _split_value(encode_value(value))
        if expect is MISSING:
            with self._pool.conn() as conn:
                conn.execute(self._sql["put"], (table, key, jvalue, bvalue))
            return True
        if expect is not None:
            encode_value(expect)
        want = canonical(expect)
        with self._pool.conn() as conn:
            while True:
                with conn.transaction():
                    # FOR UPDATE holds an existing row until commit; an absent row cannot be
                    # locked, so its insert must not overwrite one created meanwhile: DO
                    # NOTHING, and start again if it did nothing.
                    row = conn.execute(self._sql["get_locked"], (table, key)).fetchone()
                    current = _join_value(row[0], row[1]) if row else None
                    if canonical(current) != want:
                        return False
                    if row is not None:
                        conn.execute(self._sql["put"], (table, key, jvalue, bvalue))
                        return True
                    if conn.execute(self._sql["new"], (table, key, jvalue, bvalue)).rowcount:
                        return True

    def delete(self, table: str, key: str, *, label: str = "") -> None:
        check_table(table)
        check_key(key)
        with self._pool.conn() as conn:
            conn.execute(self._sql["delete"], (table, key))

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
        conds = ["tbl = %s"]
        params: list[object] = [table]
        if prefix:
            conds.append("key >= %s")
            params.append(prefix)
            upper = _prefix_upper(prefix)
            if upper is not None:
                conds.append("key < %s")
                params.append(upper)
        if start_after is not None:
            conds.append("key > %s")
            params.append(start_after)
        params.append(limit)
        query = _q(_P_SCAN, self.config.schema).replace("{where}", " AND ".join(conds))
        with self._pool.conn() as conn:
            rows = conn.execute(query, params).fetchall()
        return [(k, _join_value(j, b)) for k, j, b in rows]

    def tables(self, *, label: str = "") -> list[str]:
        with self._pool.conn() as conn:
            return [r[0] for r in conn.execute(self._sql["tables"]).fetchall()]

    def close(self) -> None:
        self._pool.close()


# ------------------------------------------------------------------------------ system tables


class PostgresSystemTables(SystemTables):
    """The SystemTables API over PostgreSQL (same methods, same results as the SQLite one).

    A sibling rather than a refactor of system.py so that the SQLite implementation and its
    users stay untouched; it overrides every method and never runs the SQLite constructor.
    """

    def __init__(self, pool: _Pool, lattice: Lattice | None) -> None:  # noqa: D107
        # The schema was created with the store's (component "system").
        self._pool = pool
        self._lattice = lattice
        self._s = sql.Identifier(pool.cfg.schema).as_string(None)

    def _x(self, query: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._pool.conn() as conn:
            cur = conn.execute(query.replace("{s}", self._s), tuple(params))
            return cur.fetchall() if cur.description else []

    # ------------------------------------------------------------------ principals
    def add_principal(self, pid: str, clearance: str, *, replace: bool = False) -> Principal:
        if type(pid) is not str or not pid or "\x00" in pid or len(pid) > 256:
            raise InvalidArgument(f"principal id must be a non-empty str, got {pid!r:.60}")
        if self._lattice is not None:
            self._lattice.check(clearance)
        now = time.time()
        conflict = ("DO UPDATE SET clearance = EXCLUDED.clearance, created = EXCLUDED.created"
                    if replace else "DO NOTHING")
        rows = self._x(
            "INSERT INTO {s}.sys_principals (id, clearance, created) VALUES (%s, %s, %s) "
            f"ON CONFLICT (id) {conflict} RETURNING id",
            (pid, clearance, now),
        )
        if not rows:
            raise InvalidArgument(f"principal {pid!r} already exists")
        return Principal(pid, clearance, now)

    def get_principal(self, pid: str) -> Principal | None:
        if type(pid) is not str or "\x00" in pid:
            return None  # cannot exist (PostgreSQL text holds no NUL)
        rows = self._x("SELECT id, clearance, created FROM {s}.sys_principals WHERE id = %s",
                       (pid,))
        return Principal(*rows[0]) if rows else None

    def principals(self) -> list[Principal]:
        rows = self._x("SELECT id, clearance, created FROM {s}.sys_principals ORDER BY id")
        return [Principal(*r) for r in rows]

    def remove_principal(self, pid: str) -> bool:
        # Tokens go with the principal (ON DELETE CASCADE), in the same statement.
        return bool(self._x("DELETE FROM {s}.sys_principals WHERE id = %s RETURNING id",
                            (pid,)))

    # ------------------------------------------------------------------ tokens
    def add_token_hash(self, digest: str, principal: str, *, expires: float | None = None) -> None:
        try:
            self._x(
                "INSERT INTO {s}.sys_tokens (hash, principal, created, expires) "
                "VALUES (%s, %s, %s, %s)",
                (digest, principal, time.time(), expires),
            )
        except psycopg.errors.ForeignKeyViolation:
            raise InvalidArgument(f"unknown principal {principal!r}") from None

    def resolve_token(
        self, token: str, *, now: float | None = None
    ) -> tuple[str, Principal | None]:
        rows = self._x(
            "SELECT p.id, p.clearance, p.created, t.expires FROM {s}.sys_tokens t "
            "JOIN {s}.sys_principals p ON p.id = t.principal WHERE t.hash = %s",
            (hash_token(token),),
        )
        if not rows:
            return "unknown", None
        pid, clearance, created, expires = rows[0]
        if expires is not None and (time.time() if now is None else now) >= expires:
            return "expired", None
        return "ok", Principal(pid, clearance, created)

    def revoke_tokens(self, principal: str) -> int:
        return len(self._x("DELETE FROM {s}.sys_tokens WHERE principal = %s RETURNING hash",
                           (principal,)))

    # ------------------------------------------------------------------ audit log
    def append_audit(
        self,
        kind: str,
        *,
        function: str | None = None,
        request_id: str | None = None,
        label: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> int:
        text = json.dumps(detail or {}, sort_keys=True, default=repr)
        rows = self._x("SELECT {s}.sys_append(true, %s, %s, %s, %s, %s, %s)",
                       (time.time(), kind, function, request_id, label, text))
        return int(rows[0][0])

    def audit(
        self, kinds: Iterable[str] | None = None, since_seq: int = 0, limit: int = 1000
    ) -> list[AuditRecord]:
        query = ("SELECT seq, time, kind, function, request_id, label, detail "
                 "FROM {s}.sys_audit WHERE seq > %s")
        params: list[object] = [since_seq]
        if kinds is not None:
            query += " AND kind = ANY(%s)"
            params.append(list(kinds))
        query += " ORDER BY seq LIMIT %s"
        params.append(limit)
        return [AuditRecord(seq, at, kind, function, request, label, json.loads(detail))
                for seq, at, kind, function, request, label, detail in self._x(query, params)]

    # ------------------------------------------------------------------ invocation logs
    def append_log(self, function: str, request_id: str, label: str, text: str) -> int:
        rows = self._x("SELECT {s}.sys_append(false, %s, NULL, %s, %s, %s, %s)",
                       (time.time(), function, request_id, label, text))
        return int(rows[0][0])

    def logs(
        self,
        visible: Callable[[str], bool],
        *,
        function: str | None = None,
        request_id: str | None = None,
        since_seq: int = 0,
        limit: int = 1000,
    ) -> list[LogRecord]:
        """Log lines whose label satisfies ``visible``; pages through the table by seq so
        that ``limit`` counts visible lines without fetching the whole log at once."""
        base = ("SELECT seq, time, function, request_id, label, text FROM {s}.sys_logs "
                "WHERE seq > %s")
        extra: list[object] = []
        if function is not None:
            base += " AND function = %s"
            extra.append(function)
        if request_id is not None:
            base += " AND request_id = %s"
            extra.append(request_id)
        base += " ORDER BY seq LIMIT 500"
        out: list[LogRecord] = []
        after = since_seq
        while len(out) < limit:
            rows = self._x(base, [after, *extra])
            for row in rows:
                if visible(row[4]):
                    out.append(LogRecord(*row))
                    if len(out) >= limit:
                        break
            if len(rows) < 500:
                break
            after = rows[-1][0]
        return out
