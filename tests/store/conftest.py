"""Backend fixture for the store conformance tests.

Every conformance test takes ``backend`` and runs once per entry of ``BACKENDS``: SQLite (a
file per store) and PostgreSQL (a schema per store, in a throwaway cluster that the session
starts on first use, on 127.0.0.1 with a free port, and stops at the end).
"""

from __future__ import annotations

import itertools
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


PG_BIN = Path(os.environ.get("TRAPEZE_PG_BIN", "/usr/lib/postgresql/15/bin"))
# Debian package that provides PG_BIN (initdb, pg_ctl, postgres).
PG_PACKAGE = "postgresql-15"


@dataclass
class PgCluster:
    """A running throwaway cluster: superuser ``postgres`` with a password, TCP on loopback."""

    host: str
    port: int
    password: str

    def url(self, dbname: str = "postgres", user: str = "postgres",
            password: str | None = None, **query: str) -> str:
        pw = self.password if password is None else password
        tail = "&".join(f"{k}={v}" for k, v in query.items())
        return (f"postgresql://{user}:{pw}@{self.host}:{self.port}/{dbname}"
                + (f"?{tail}" if tail else ""))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_user() -> tuple[list[str], int, int]:
    """Command prefix to run the server as an unprivileged user (initdb refuses root)."""
    if os.geteuid() != 0:
        return [], os.getuid(), os.getgid()
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        prefix = ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}",
                  "--clear-groups", "--"]
        return prefix, entry.pw_uid, entry.pw_gid
    pytest.skip("running as root and no unprivileged user (postgres, nobody) to run initdb")


_PG_DIR_PREFIX = "trapeze-pg-"


def _sweep_orphans(prefix: list[str]) -> None:
    """Stop and remove clusters left by sessions that were killed (SIGTERM/SIGKILL skip the
    fixture's teardown); clusters of live sessions, even concurrent ones, are left alone."""
    for root in Path(tempfile.gettempdir()).glob(_PG_DIR_PREFIX + "*"):
        try:
            owner = int((root / "owner.pid").read_text())
            os.kill(owner, 0)
            continue  # its session is alive
        except ProcessLookupError:
            pass
        except (OSError, ValueError):
            continue  # not ours to judge (unreadable, being created)
        if (root / "data" / "postmaster.pid").exists():
            subprocess.run([*prefix, str(PG_BIN / "pg_ctl"), "-D", str(root / "data"), "-m",
                            "immediate", "-w", "stop"], cwd=root, check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """Start a throwaway PostgreSQL cluster for the session (about a second)."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL server binaries not found in {PG_BIN} "
                    f"(apt-get install {PG_PACKAGE}, or set TRAPEZE_PG_BIN)")
    prefix, uid, gid = _as_user()
    _sweep_orphans(prefix)
    # Under /tmp, not pytest's tmp_path: the latter sits in a root-only directory the
    # server's user could not enter.
    root = Path(tempfile.mkdtemp(prefix=_PG_DIR_PREFIX))
    (root / "owner.pid").write_text(str(os.getpid()))
    os.chown(root, uid, gid)
    password = secrets.token_hex(8)
    pwfile = root / "pw"
    pwfile.write_text(password + "\n")
    os.chown(pwfile, uid, gid)
    data = root / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"

    def run(*args: str) -> None:
        subprocess.run([*prefix, *args], check=True, env=env, cwd=root,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    try:
        # Password (scram) over TCP so that the tests exercise real authentication; trust
        # only on the unix socket in our private directory.
        run(str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--locale=C",
            "--no-sync")
        port = 0
        for _ in range(3):  # the free port can be taken between probe and bind: try again
            port = _free_port()
            # Durability settings off: a test cluster need not survive power loss, and
            # fsync dominates commit time otherwise. kill -9 of a client is unaffected.
            opts = (f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off "
                    "-c synchronous_commit=off -c full_page_writes=off "
                    "-c max_connections=300 -c shared_buffers=64MB")
            try:
                run(str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", "-t", "30", "-o", opts,
                    "-l", str(root / "server.log"), "start")
                break
            except subprocess.CalledProcessError:
                continue
        else:
            log = (root / "server.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the test PostgreSQL cluster did not start:\n{log}")
        yield PgCluster("127.0.0.1", port, password)
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*prefix, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m",
                            "immediate", "-w", "stop"], env=env, cwd=root,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(root, ignore_errors=True)


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
