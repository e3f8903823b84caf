"""A throwaway PostgreSQL cluster for the test session (shared by tests/store, tests/streams,
tests/workflows; registered as fixtures by tests/conftest.py).

``pg_cluster`` (session-scoped) starts one cluster on first use, on 127.0.0.1 with a free
port and password authentication, and stops it at the end of the session; a session that
never asks for it starts nothing. ``pg_database`` gives a test its own fresh, empty database
in that cluster (dropped afterwards), for tests that need a whole database rather than a
schema.
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
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

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


class _Databases:
    """Hands out fresh databases, creating the next one in the background while a test runs
    (CREATE DATABASE copies the template: a few hundred milliseconds the engine tests, which
    mostly wait, need not spend on their critical path)."""

    def __init__(self, cluster: PgCluster) -> None:
        self._cluster = cluster
        self._names = itertools.count()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pg-createdb")
        self._next: Future[str] | None = None

    def _create(self) -> str:
        # The pid keeps names apart if several sessions ever share a cluster.
        name = f"t{os.getpid()}_{next(self._names)}_{secrets.token_hex(3)}"
        with psycopg.connect(self._cluster.url(), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return name

    def take(self) -> str:
        ready = self._next if self._next is not None else self._executor.submit(self._create)
        self._next = self._executor.submit(self._create)
        return ready.result()

    def drop(self, name: str) -> None:
        with psycopg.connect(self._cluster.url(), autocommit=True) as admin:
            # FORCE: a connection a failed test left open must not keep the database alive.
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        if self._next is not None and self._next.exception() is None:
            self.drop(self._next.result())


@pytest.fixture(scope="session")
def _pg_databases(pg_cluster: PgCluster) -> Iterator[_Databases]:
    dbs = _Databases(pg_cluster)
    try:
        yield dbs
    finally:
        dbs.close()


@pytest.fixture
def pg_database(pg_cluster: PgCluster, _pg_databases: _Databases) -> Iterator[str]:
    """The URL of a fresh, empty database in the session's cluster, dropped afterwards."""
    name = _pg_databases.take()
    try:
        yield pg_cluster.url(name)
    finally:
        _pg_databases.drop(name)
