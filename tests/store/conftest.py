"""Backend fixture for the store conformance tests.

Every conformance test takes ``backend`` and runs once per entry of ``BACKENDS``; a new
backend (PostgreSQL) joins by adding an entry whose ``url()`` yields a fresh, empty store.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from trapeze.labels import Lattice
from trapeze.store import FacetedStore, open_store

HELLO_RETAIL = {
    "bottom": ["public"],
    "public": ["client:*", "photographer:*"],
    "client:*": ["owner", "client-cc:*"],
    "client-cc:*": ["cc-company"],
    "photographer:*": ["owner"],
    "owner": ["top"],
    "cc-company": ["top"],
}

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


BACKENDS: dict[str, Callable[[Path], Backend]] = {"sqlite": _sqlite_backend}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
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
