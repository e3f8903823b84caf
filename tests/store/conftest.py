"""Backend fixture for the store conformance tests.

Every conformance test takes ``backend`` and runs once per entry of ``BACKENDS``: SQLite (a
file per store) and PostgreSQL (a schema per store, in the session's throwaway cluster: the
``pg_cluster`` fixture of tests/pg_cluster.py, shared with the engine tests).
"""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

# Re-exported for the store tests that import them from here; the fixture itself is
# registered once, in tests/conftest.py (a second registration would start a second cluster).
from pg_cluster import PgCluster, _free_port
from trapeze.labels import Lattice
from trapeze.labels.examples import HELLO_RETAIL
from trapeze.store import FacetedStore, open_store

__all__ = ["PgCluster", "_free_port"]


# Default budget keeps tests/store well under a minute; longer runs:
#   TRAPEZE_STORE_PROFILE=long python -m pytest tests/store -q
settings.register_profile(
    "store-default",
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    # `backend` is function-scoped but hands out a fresh store per open(), so reuse across
    # examples is safe.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "store-long",
    max_examples=2000,
    stateful_step_count=100,
    deadline=None,
    # `backend` is function-scoped but hands out a fresh store per open(), so reuse across
    # examples is safe.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
STORE_SETTINGS = settings.get_profile(
    "store-long" if os.environ.get("TRAPEZE_STORE_PROFILE") == "long" else "store-default"
)


def hello_retail() -> Lattice:
    return Lattice.from_hasse(HELLO_RETAIL)


@dataclass
class Backend:
    name: str
    url: Callable[[], str]  # a URL naming a fresh, empty store

    def open(self, lattice: Lattice, url: str | None = None) -> FacetedStore:
        """Open ``url`` (shared with other processes), or a fresh store when None."""
        return open_store(self.url() if url is None else url, lattice)


def _sqlite_backend(tmp: Path) -> Backend:
    counter = itertools.count()
    return Backend("sqlite", lambda: f"sqlite:///{tmp}/store-{next(counter)}.db")


def _postgres_backend(cluster: PgCluster) -> Backend:
    # A schema per store: much cheaper than a database per store (hypothesis opens hundreds)
    # and just as isolated. The pid keeps names apart if several sessions share a cluster.
    counter = itertools.count()
    return Backend(
        "postgresql",
        lambda: cluster.url(schema=f"t{os.getpid()}_{next(counter)}_{secrets.token_hex(3)}"),
    )


BACKENDS: dict[str, Callable[[Path], Backend]] = {"sqlite": _sqlite_backend}
# Backends that need a server take it from a session fixture, started only if used.
SERVER_BACKENDS: dict[str, tuple[str, Callable[[Any], Backend]]] = {
    "postgresql": ("pg_cluster", _postgres_backend),
}


@pytest.fixture(params=sorted([*BACKENDS, *SERVER_BACKENDS]))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param in SERVER_BACKENDS:
        fixture, make = SERVER_BACKENDS[request.param]
        yield make(request.getfixturevalue(fixture))
    else:
        yield BACKENDS[request.param](tmp_path)


@pytest.fixture
def lattice() -> Lattice:
    return hello_retail()


@pytest.fixture
def store(backend: Backend, lattice: Lattice) -> Iterator[FacetedStore]:
    s = backend.open(lattice)
    try:
        yield s
    finally:
        s.close()
