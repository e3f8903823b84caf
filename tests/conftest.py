"""Shared fixtures: the session's PostgreSQL cluster (tests/pg_cluster.py), and those of the
stream and workflow engine tests (tests/streams, tests/workflows, tests/platform).

`db_url`/`db` run each engine test once per backend: SQLite (a file in tmp_path) and
PostgreSQL (a fresh database in the session's throwaway cluster, skipped when the server
binaries are missing).

`invoke` here is a small in-process function table (a fake of the runtime's Invoker), used
only in these engine unit tests: it runs plain Python callables at the label the engine asks
for, lets them raise their label, and reports the final label the way the runtime does
(InvocationResult.label with response_bound = top). The end-to-end tests go through the
real platform instead.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

# Registered here, once for the whole session: tests/store uses them too.
from pg_cluster import _pg_databases, pg_cluster, pg_database
from trapeze.labels import Lattice
from trapeze.runtime.engine_store import EngineDB

__all__ = ["_pg_databases", "pg_cluster", "pg_database"]

ENGINE_BACKENDS = ("sqlite", "postgresql")

LATTICE = Lattice.from_hasse({
    "public": ["alice", "bob"],
    "alice": ["top"],
    "bob": ["top"],
    "top": [],
})


@dataclass
class Result:
    status: str
    value: Any = None
    error: str | None = None
    label: str | None = None


class Ctx:
    def __init__(self, label: str) -> None:
        self.label = label

    def raise_to(self, label: str) -> None:
        assert LATTICE.flows(self.label, label), "labels never go down"
        self.label = label


class FakeFunctions:
    def __init__(self, table: dict[str, Callable[[Any, Ctx], Any]]) -> None:
        self.table = table
        self.calls: list[tuple[str, Any, str]] = []
        self.lock = threading.Lock()

    def __call__(self, function: str, event: Any, label: str) -> Result:
        with self.lock:
            self.calls.append((function, event, label))
        ctx = Ctx(label)
        try:
            value = self.table[function](event, ctx)
        except TimeoutError as e:
            return Result("timeout", error=str(e), label=ctx.label)
        except Exception as e:
            return Result("error", error=f"{type(e).__name__}: {e}", label=ctx.label)
        return Result("ok", value, label=ctx.label)


@pytest.fixture(params=ENGINE_BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """The URL of a fresh, empty database of the engine tables, per backend."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("pg_database"))
    return f"sqlite:///{tmp_path / 'app.db'}"


@pytest.fixture
def db(db_url: str) -> Any:
    d = EngineDB.open(db_url)
    yield d
    d.close()


@pytest.fixture
def lattice() -> Lattice:
    return LATTICE


@pytest.fixture
def fake() -> type[FakeFunctions]:
    return FakeFunctions
