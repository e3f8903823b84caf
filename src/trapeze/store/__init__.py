"""The faceted store (DESIGN §5) and the plain IFC-off baseline, chosen by URL.

>>> store = open_store("sqlite:///var/lib/app.db", lattice)
>>> store = open_store("postgresql://app@db.internal:5432/trapeze", lattice)
>>> store.put("orders", "o1", {"n": 1}, label="client:alice")
True
"""

from __future__ import annotations

from trapeze.errors import ConfigError
from trapeze.labels import Lattice
from trapeze.store.base import MISSING, FacetedStore, PlainStore, StoreView
from trapeze.store.sqlite import (
    SqliteFacetedStore,
    SqlitePlainStore,
    StoreClosedError,
    parse_sqlite_url,
)
from trapeze.store.system import AuditRecord, LogRecord, Principal, SystemTables
from trapeze.store.values import Value

__all__ = [
    "MISSING",
    "AuditRecord",
    "FacetedStore",
    "LogRecord",
    "PlainStore",
    "Principal",
    "StoreClosedError",
    "StoreView",
    "SystemTables",
    "Value",
    "open_plain_store",
    "open_store",
]


def _scheme(url: str) -> str:
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(
            f"store URL {url!r} must look like sqlite:///path/app.db or postgresql://..."
        )
    return url.split("://", 1)[0].lower()


_POSTGRES = ("postgresql", "postgres")


def _unsupported(url: str, scheme: str) -> ConfigError:
    # Only the scheme is quoted: a URL of an unknown kind may still carry a password.
    return ConfigError(
        f"unknown store URL scheme {scheme!r}; use sqlite:///PATH or "
        "postgresql://user@host:port/dbname"
    )


def open_store(url: str, lattice: Lattice) -> FacetedStore:
    """Open (creating if needed) the faceted store at ``url`` under ``lattice``."""
    scheme = _scheme(url)
    if scheme == "sqlite":
        return SqliteFacetedStore(parse_sqlite_url(url), lattice)
    if scheme in _POSTGRES:
        # Imported on demand: SQLite-only deployments need not have psycopg installed.
        from trapeze.store.postgres import PostgresFacetedStore, parse_postgres_url

        return PostgresFacetedStore(parse_postgres_url(url), lattice)
    raise _unsupported(url, scheme)


def open_plain_store(url: str) -> PlainStore:
    """Open the IFC-off baseline store: same calls, labels ignored, one value per key."""
    scheme = _scheme(url)
    if scheme == "sqlite":
        return SqlitePlainStore(parse_sqlite_url(url))
    if scheme in _POSTGRES:
        from trapeze.store.postgres import PostgresPlainStore, parse_postgres_url

        return PostgresPlainStore(parse_postgres_url(url))
    raise _unsupported(url, scheme)
