"""The per-file writer lock that queues this process's SQLite writers (sqlite_writer.py)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from trapeze.runtime.engine_store.sqlite import SqliteEngineDB
from trapeze.store.sqlite_writer import WriterLock, database_path
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
    conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    system = SystemTables(lambda: conn, None)
    try:
        assert database_path(conn) == str(db)
        assert system._writer._lock is engine._writer._lock
    finally:
        engine.close()
        conn.close()


def test_reentrant_and_gives_up_after_the_busy_timeout(tmp_path: Path) -> None:
    lock = WriterLock(str(tmp_path / "x.db"), 0.2)
    with lock.held(), lock.held():  # the same thread again: no deadlock
        failed: list[BaseException] = []

        def other() -> None:
            try:
                with lock.held():
                    pass
            except sqlite3.OperationalError as exc:
                failed.append(exc)

        t = threading.Thread(target=other)
        t.start()
        t.join(5)
    assert len(failed) == 1 and "database is locked" in str(failed[0])
    with lock.held():  # released by the holder: free again
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

    system = SystemTables(conn, None)

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
