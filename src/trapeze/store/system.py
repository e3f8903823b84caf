"""System tables the platform keeps next to the faceted data, in the same database file.

Principals, API tokens (only their SHA-256 is stored), the append-only audit log and the
per-invocation logs. These are trusted-side records, never reachable from guest code; the
logs carry the invocation's label and are filtered by a caller-supplied visibility predicate
(the gateway passes ``lambda l: lattice.flows(l, viewer_clearance)``).

``seq`` (the PostgreSQL tables' too) is store-wide and counts rows at every label, so it is a
trusted-side paging key only: what is shown to a viewer carries a per-viewer cursor instead
(``trapeze.monitor.audit.for_viewer``; Runtime.logs_visible_to / audit_visible_to).

Thread and process safety come from the store's connection provider (one connection per
thread, WAL, busy timeout) and, between this process's threads, the file's writer lock
(sqlite_writer.py); every write is a single autocommit statement.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from trapeze.errors import InvalidArgument
from trapeze.labels import Lattice
from trapeze.store.sqlite_writer import WriterLock

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS sys_principals (
        id        TEXT PRIMARY KEY,
        clearance TEXT NOT NULL,
        created   REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS sys_tokens (
        hash      TEXT PRIMARY KEY,
        principal TEXT NOT NULL REFERENCES sys_principals(id) ON DELETE CASCADE,
        created   REAL NOT NULL,
        expires   REAL
    )""",
    "CREATE INDEX IF NOT EXISTS sys_tokens_principal ON sys_tokens (principal)",
    # AUTOINCREMENT: an audit seq is never reused, even if rows were ever pruned.
    """CREATE TABLE IF NOT EXISTS sys_audit (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        time       REAL NOT NULL,
        kind       TEXT NOT NULL,
        function   TEXT,
        request_id TEXT,
        label      TEXT,
        detail     TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS sys_audit_kind ON sys_audit (kind, seq)",
    """CREATE TABLE IF NOT EXISTS sys_logs (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        time       REAL NOT NULL,
        function   TEXT NOT NULL,
        request_id TEXT NOT NULL,
        label      TEXT NOT NULL,
        text       TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS sys_logs_request ON sys_logs (request_id, seq)",
    # Append-only is enforced in the database, not only by convention in this class.
    """CREATE TRIGGER IF NOT EXISTS sys_audit_no_update BEFORE UPDATE ON sys_audit
       BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS sys_audit_no_delete BEFORE DELETE ON sys_audit
       BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
]


@dataclass(frozen=True)
class Principal:
    id: str
    clearance: str
    created: float


@dataclass(frozen=True)
class AuditRecord:
    seq: int  # store-wide: never shown to a viewer (module doc)
    time: float
    kind: str
    function: str | None
    request_id: str | None
    label: str | None
    detail: dict[str, Any]


@dataclass(frozen=True)
class LogRecord:
    seq: int  # store-wide: never shown to a viewer (module doc)
    time: float
    function: str
    request_id: str
    label: str
    text: str


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class SystemTables:
    def __init__(
        self, conn: Callable[[], sqlite3.Connection], lattice: Lattice | None,
        writer: WriterLock,
    ) -> None:
        """`writer`: the write lock of the store's file (the store's own, see
        sqlite_writer.py)."""
        self._conn = conn
        self._lattice = lattice
        self._writer = writer
        with self._writer.transaction(conn()) as c:
            for stmt in _SCHEMA:
                c.execute(stmt)

    # ------------------------------------------------------------------ principals
    def add_principal(self, pid: str, clearance: str, *, replace: bool = False) -> Principal:
        if type(pid) is not str or not pid or "\x00" in pid or len(pid) > 256:
            raise InvalidArgument(f"principal id must be a non-empty str, got {pid!r:.60}")
        if self._lattice is not None:
            self._lattice.check(clearance)
        now = time.time()
        verb = "INSERT OR REPLACE" if replace else "INSERT"
        try:
            with self._writer:
                self._conn().execute(
                    f"{verb} INTO sys_principals (id, clearance, created) VALUES (?, ?, ?)",
                    (pid, clearance, now),
                )
        except sqlite3.IntegrityError:
            raise InvalidArgument(f"principal {pid!r} already exists") from None
        return Principal(pid, clearance, now)

    def get_principal(self, pid: str) -> Principal | None:
        row = self._conn().execute(
            "SELECT id, clearance, created FROM sys_principals WHERE id = ?", (pid,)
        ).fetchall()
        return Principal(*row[0]) if row else None

    def principals(self) -> list[Principal]:
        rows = self._conn().execute(
            "SELECT id, clearance, created FROM sys_principals ORDER BY id"
        ).fetchall()
        return [Principal(*r) for r in rows]

    def remove_principal(self, pid: str) -> bool:
        with self._writer.transaction(self._conn()) as c:
            c.execute("DELETE FROM sys_tokens WHERE principal = ?", (pid,))
            n = c.execute("DELETE FROM sys_principals WHERE id = ?", (pid,)).rowcount
        return n > 0

    # ------------------------------------------------------------------ tokens
    def create_token(self, principal: str, *, expires: float | None = None) -> str:
        """Mint a random token for ``principal``; only its hash is stored, so show it once."""
        token = "tz_" + secrets.token_urlsafe(32)
        self.add_token_hash(hash_token(token), principal, expires=expires)
        return token

    def add_token_hash(self, digest: str, principal: str, *, expires: float | None = None) -> None:
        if self.get_principal(principal) is None:
            raise InvalidArgument(f"unknown principal {principal!r}")
        with self._writer:
            self._conn().execute(
                "INSERT INTO sys_tokens (hash, principal, created, expires) VALUES (?, ?, ?, ?)",
                (digest, principal, time.time(), expires),
            )

    def resolve_token(
        self, token: str, *, now: float | None = None
    ) -> tuple[str, Principal | None]:
        """``("ok", principal)``, ``("expired", None)`` or ``("unknown", None)``."""
        rows = self._conn().execute(
            "SELECT p.id, p.clearance, p.created, t.expires FROM sys_tokens t "
            "JOIN sys_principals p ON p.id = t.principal WHERE t.hash = ?",
            (hash_token(token),),
        ).fetchall()
        if not rows:
            return "unknown", None
        pid, clearance, created, expires = rows[0]
        if expires is not None and (time.time() if now is None else now) >= expires:
            return "expired", None
        return "ok", Principal(pid, clearance, created)

    def revoke_tokens(self, principal: str) -> int:
        with self._writer:
            return self._conn().execute(
                "DELETE FROM sys_tokens WHERE principal = ?", (principal,)
            ).rowcount

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
        with self._writer:
            rows = self._conn().execute(
                "INSERT INTO sys_audit (time, kind, function, request_id, label, detail) "
                "VALUES (?, ?, ?, ?, ?, ?) RETURNING seq",
                (time.time(), kind, function, request_id, label, text),
            ).fetchall()
        return int(rows[0][0])

    def audit(
        self, kinds: Iterable[str] | None = None, since_seq: int = 0, limit: int = 1000
    ) -> list[AuditRecord]:
        sql = "SELECT seq, time, kind, function, request_id, label, detail FROM sys_audit " \
              "WHERE seq > ?"
        params: list[object] = [since_seq]
        if kinds is not None:
            ks = list(kinds)
            sql += f" AND kind IN ({', '.join('?' * len(ks)) or 'NULL'})"
            params += ks
        sql += " ORDER BY seq LIMIT ?"
        params.append(limit)
        rows = self._conn().execute(sql, params).fetchall()
        return [AuditRecord(*r[:6], json.loads(r[6])) for r in rows]

    # ------------------------------------------------------------------ invocation logs
    def append_log(self, function: str, request_id: str, label: str, text: str) -> int:
        with self._writer:
            rows = self._conn().execute(
                "INSERT INTO sys_logs (time, function, request_id, label, text) "
                "VALUES (?, ?, ?, ?, ?) RETURNING seq",
                (time.time(), function, request_id, label, text),
            ).fetchall()
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
        """Log lines whose label satisfies ``visible`` (the caller's clearance check)."""
        sql = "SELECT seq, time, function, request_id, label, text FROM sys_logs WHERE seq > ?"
        params: list[object] = [since_seq]
        if function is not None:
            sql += " AND function = ?"
            params.append(function)
        if request_id is not None:
            sql += " AND request_id = ?"
            params.append(request_id)
        sql += " ORDER BY seq"
        out: list[LogRecord] = []
        # Filter in Python while streaming, so `limit` counts visible lines only.
        cur = self._conn().execute(sql, params)
        try:
            for row in cur:
                if visible(row[4]):
                    out.append(LogRecord(*row))
                    if len(out) >= limit:
                        break
        finally:
            cur.close()  # release the read snapshot now, not when the cursor is collected
        return out
