"""The per-file writer lock that queues this process's SQLite writers (sqlite_writer.py)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from trapeze.labels import Lattice
from trapeze.labels.examples import HELLO_RETAIL
from trapeze.runtime.engine_store.sqlite import SqliteEngineDB
from trapeze.store import open_plain_store, open_store
from trapeze.store.sqlite_writer import WriterLock
from trapeze.store.system import SystemTables


def test_one_lock_per_file_whatever_the_spelling(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    a = WriterLock(str(tmp_path / "app.db"), 1.0)
    b = WriterLock(str(tmp_path / "d" / ".." / "app.db"), 1.0)
    c = WriterLock(str(tmp_path / "other.db"), 1.0)
    assert a._lock is b._lock and a._lock is not c._lock


def test_system_tables_and_engine_share_the_files_lock(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    engine = SqliteEngineDB.from_url(f"sqlite:///{db}")
    store = open_store(f"sqlite:///{db}", Lattice.from_hasse(HELLO_RETAIL))
    plain = open_plain_store(f"sqlite:///{tmp_path / 'plain.db'}")
    try:
        system = store.system
        assert system._writer is store._wlock  # type: ignore[attr-defined]
        assert system._writer._lock is engine._writer._lock
        assert plain.system._writer is plain._wlock  # type: ignore[attr-defined]
    finally:
        engine.close()
        store.close()
        plain.close()


def test_reentrant_and_gives_up_after_the_busy_timeout(tmp_path: Path) -> None:
    lock = WriterLock(str(tmp_path / "x.db"), 0.2)
    with lock, lock:  # the same thread again: no deadlock
        failed: list[BaseException] = []

        def other() -> None:
            try:
                with lock:
                    pass
            except sqlite3.OperationalError as exc:
                failed.append(exc)

        t = threading.Thread(target=other)
        t.start()
        t.join(5)
    assert len(failed) == 1 and "database is locked" in str(failed[0])
    with lock:  # released by the holder: free again
        pass


def test_writes_from_many_threads_all_land(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    engine = SqliteEngineDB.from_url(f"sqlite:///{db}")
    conns: list[sqlite3.Connection] = []
    local = threading.local()

    def conn() -> sqlite3.Connection:
        if not hasattr(local, "c"):
            local.c = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
            local.c.execute("PRAGMA journal_mode = WAL")
            conns.append(local.c)
        return local.c

    system = SystemTables(conn, None, WriterLock(str(db), 10.0))

    def writer(n: int) -> None:
        for i in range(50):
            system.append_log("f", f"r{n}-{i}", "public", "x")

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert len(system.logs(lambda _label: True, limit=10_000)) == 400
    finally:
        engine.close()
        for c in conns:
            c.close()


@pytest.mark.parametrize("path", ["", ":memory:"])
def test_in_memory_databases_get_their_own_lock(path: str) -> None:
    assert WriterLock(path, 1.0)._lock is not WriterLock(path, 1.0)._lock


def test_transaction_commits_or_rolls_back(tmp_path: Path) -> None:
    db = str(tmp_path / "t.db")
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE t (v INTEGER)")
    lock = WriterLock(db, 1.0)
    with lock.transaction(conn):
        conn.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(RuntimeError), lock.transaction(conn):
        conn.execute("INSERT INTO t VALUES (2)")
        raise RuntimeError("the write fails half way")
    with lock.transaction(conn):  # a body that rolled back itself leaves nothing to commit
        conn.execute("INSERT INTO t VALUES (3)")
        conn.execute("ROLLBACK")
    assert conn.execute("SELECT v FROM t").fetchall() == [(1,)]
    assert not conn.in_transaction and lock._lock.acquire(blocking=False)
    lock._lock.release()
