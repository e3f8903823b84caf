"""The faceted store (DESIGN §5) and the plain IFC-off baseline, chosen by URL.

>>> store = open_store("sqlite:///var/lib/app.db", lattice)
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


def _unsupported(url: str, scheme: str) -> ConfigError:
    if scheme in ("postgresql", "postgres"):
        return ConfigError(
            "postgresql:// store URLs are not yet supported; use sqlite:///path/app.db "
            "(a PostgreSQL backend with the same semantics is planned)"
        )
    return ConfigError(f"unknown store URL scheme {scheme!r} in {url!r}; use sqlite:///PATH")


def open_store(url: str, lattice: Lattice) -> FacetedStore:
    """Open (creating if needed) the faceted store at ``url`` under ``lattice``."""
    scheme = _scheme(url)
    if scheme == "sqlite":
        return SqliteFacetedStore(parse_sqlite_url(url), lattice)
    raise _unsupported(url, scheme)


def open_plain_store(url: str) -> PlainStore:
    """Open the IFC-off baseline store: same calls, labels ignored, one value per key."""
    scheme = _scheme(url)
    if scheme == "sqlite":
        return SqlitePlainStore(parse_sqlite_url(url))
    raise _unsupported(url, scheme)
