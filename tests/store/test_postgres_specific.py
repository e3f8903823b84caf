"""What only the PostgreSQL backend has: connection errors, schema versions, URL options, the
system tables over PostgreSQL, and the isolation level it forces.

The conformance suite (model, independence, concurrency, crash, bad input) runs on this
backend through the ``backend`` fixture; these tests use the session's cluster directly.
"""

from __future__ import annotations

import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

from store.conftest import PgCluster, _free_port, hello_retail
from store.invariants import check_write_rule_invariant
from trapeze.errors import ConfigError, InvalidArgument
from trapeze.store import open_plain_store, open_store
from trapeze.store.base import StoreSchemaError
from trapeze.store.postgres import (
    SCHEMA_VERSIONS,
    StoreAuthError,
    StoreUnavailableError,
)


def fresh_schema() -> str:
    return f"s_{secrets.token_hex(6)}"


def admin(cluster: PgCluster, dbname: str = "postgres") -> psycopg.Connection[Any]:
    return psycopg.connect(cluster.url(dbname), autocommit=True)


# ------------------------------------------------------------------------ connection errors


def test_unreachable_server_names_host_and_port() -> None:
    port = _free_port()  # nothing listens there
    url = f"postgresql://app:s3cret-pw@127.0.0.1:{port}/appdb"
    for opener in (lambda: open_store(url, hello_retail()), lambda: open_plain_store(url)):
        with pytest.raises(StoreUnavailableError) as err:
            opener()
        msg = str(err.value)
        assert f"127.0.0.1:{port}" in msg and "refused" in msg.lower() and "hint" in msg
        assert "s3cret-pw" not in msg
        assert isinstance(err.value, ConfigError)


def test_unknown_host_is_unavailable() -> None:
    with pytest.raises(StoreUnavailableError, match="nohost.invalid"):
        open_store("postgresql://app@nohost.invalid/appdb", hello_retail())


def test_wrong_credentials(pg_cluster: PgCluster) -> None:
    url = pg_cluster.url(password="wrong-password-123")
    with pytest.raises(StoreAuthError) as err:
        open_store(url, hello_retail())
    msg = str(err.value)
    assert "credentials" in msg and "password authentication failed" in msg
    assert "wrong-password-123" not in msg and pg_cluster.password not in msg
    with pytest.raises(StoreAuthError, match="credentials"):
        open_plain_store(pg_cluster.url(user="nosuchuser", password="x"))


def test_missing_database(pg_cluster: PgCluster) -> None:
    with pytest.raises(StoreAuthError, match="does not exist.*createdb"):
        open_store(pg_cluster.url("no_such_db"), hello_retail())


# ------------------------------------------------------------------------ schema versions


def test_schema_versions_recorded(pg_cluster: PgCluster) -> None:
    schema = fresh_schema()
    open_store(pg_cluster.url(schema=schema), hello_retail()).close()
    open_plain_store(pg_cluster.url(schema=schema)).close()
    with admin(pg_cluster) as conn:
        rows = conn.execute(
            f"SELECT component, version FROM {schema}.trapeze_schema ORDER BY component"
        ).fetchall()
    assert dict(rows) == SCHEMA_VERSIONS


def test_schema_from_newer_version_refused(pg_cluster: PgCluster) -> None:
    schema = fresh_schema()
    url = pg_cluster.url(schema=schema)
    with open_store(url, hello_retail()) as s:
        s.put("t", "k", 1, label="public")
    with admin(pg_cluster) as conn:
        conn.execute(
            f"UPDATE {schema}.trapeze_schema SET version = 99 WHERE component = 'faceted'"
        )
    with pytest.raises(StoreSchemaError) as err:
        open_store(url, hello_retail())
    msg = str(err.value)
    assert "version 99" in msg and f"version {SCHEMA_VERSIONS['faceted']}" in msg
    assert schema in msg and "upgrade Trapeze" in msg
    # Nothing was changed by the refused open.
    with admin(pg_cluster) as conn:
        assert conn.execute(f"SELECT count(*) FROM {schema}.facets").fetchone() == (1,)


def test_concurrent_first_opens(pg_cluster: PgCluster) -> None:
    """Several processes opening a fresh database at once must all get a working store."""
    url = pg_cluster.url(schema=fresh_schema())
    barrier = threading.Barrier(6)

    def opener(i: int) -> int | None:
        barrier.wait()
        with open_store(url, hello_retail()) as s:
            return s.put_seq("t", f"k{i}", i, label="public")

    with ThreadPoolExecutor(6) as ex:
        assert all(seq is not None for seq in ex.map(opener, range(6)))


# ------------------------------------------------------------------------ URL options


def test_url_options(pg_cluster: PgCluster) -> None:
    lat = hello_retail()
    with pytest.raises(ConfigError, match="schema="):
        open_store(pg_cluster.url(schema="Bad-Name"), lat)
    with pytest.raises(ConfigError, match="schema="):
        open_store(pg_cluster.url(schema="x;drop"), lat)
    with pytest.raises(ConfigError, match="pool_max"):
        open_store(pg_cluster.url(pool_max="many"), lat)
    with pytest.raises(ConfigError, match="pool_max"):
        open_store(pg_cluster.url(pool_min="5", pool_max="2"), lat)
    with pytest.raises(ConfigError, match="not a valid PostgreSQL URL"):
        open_store(pg_cluster.url(frobnicate="1"), lat)
    with pytest.raises(ConfigError, match="scheme"):
        open_store("mysql://x", lat)
    with open_store(pg_cluster.url(schema=fresh_schema(), pool_max="2"), lat) as s:
        s.put("t", "k", 1, label="public")
        assert s.get("t", "k", label="owner") == 1


def test_stores_in_different_schemas_are_apart(pg_cluster: PgCluster) -> None:
    a = open_store(pg_cluster.url(schema=fresh_schema()), hello_retail())
    b = open_store(pg_cluster.url(schema=fresh_schema()), hello_retail())
    try:
        a.put("t", "k", "a", label="public")
        assert b.get("t", "k", label="top") is None
        assert b.tables(label="top") == []
    finally:
        a.close()
        b.close()


def test_closed_store(pg_cluster: PgCluster) -> None:
    from trapeze.store import StoreClosedError

    s = open_store(pg_cluster.url(schema=fresh_schema()), hello_retail())
    s.close()
    with pytest.raises(StoreClosedError):
        s.get("t", "k", label="public")


# ------------------------------------------------------------------------ isolation level


def test_write_rule_holds_under_repeatable_read_default(pg_cluster: PgCluster) -> None:
    """A database whose default isolation is REPEATABLE READ would break the write rule if
    the store relied on the default: it must force READ COMMITTED on its connections."""
    db = f"rr_{secrets.token_hex(4)}"
    with admin(pg_cluster) as conn:
        conn.execute(f"CREATE DATABASE {db}")
        conn.execute(f"ALTER DATABASE {db} SET default_transaction_isolation = "
                     "'repeatable read'")
    lattice = hello_retail()
    store = open_store(pg_cluster.url(db, pool_max="8"), lattice)
    labels = ["public", "client:alice", "owner", "client-cc:alice", "bottom", "top"]
    barrier = threading.Barrier(6)

    def work(w: int) -> None:
        barrier.wait()
        for i in range(40):
            store.put("t", f"k{i % 2}", [w, i], label=labels[(w + i) % len(labels)])

    try:
        with ThreadPoolExecutor(6) as ex:
            list(ex.map(work, range(6)))
        for key in ("k0", "k1"):
            check_write_rule_invariant(lattice, store.raw_facets("t", key))
        assert store.integrity_check() == ["ok"]  # type: ignore[attr-defined]
    finally:
        store.close()


def test_hot_key_many_writers(pg_cluster: PgCluster) -> None:
    """Ten writers on one key at overlapping labels. The conformance suite's concurrency
    tests spread writes over four keys and did not notice the key lock being removed from
    facet_put; this one fails without it (duplicate seqs or a broken invariant)."""
    import random

    lattice = hello_retail()
    labels = ["public", "client:alice", "owner", "client-cc:alice", "bottom", "top",
              "client:bob", "photographer:p"]
    barrier = threading.Barrier(10)
    with open_store(pg_cluster.url(schema=fresh_schema(), pool_max="12"), lattice) as store:

        def work(w: int) -> None:
            rng = random.Random(w)
            barrier.wait()
            for i in range(150):
                if i % 10 == 9:
                    expect = store.get("t", "hot", label="owner")
                    store.put("t", "hot", [w, i], label="owner", expect=expect)
                else:
                    store.put("t", "hot", [w, i], label=rng.choice(labels))

        with ThreadPoolExecutor(10) as ex:
            list(ex.map(work, range(10)))
        check_write_rule_invariant(lattice, store.raw_facets("t", "hot"))


# ------------------------------------------------------------------------ system tables


def test_system_tables(pg_cluster: PgCluster) -> None:
    with open_store(pg_cluster.url(schema=fresh_schema()), hello_retail()) as store:
        system = store.system
        system.add_principal("alice", "client:alice")
        with pytest.raises(InvalidArgument, match="already exists"):
            system.add_principal("alice", "owner")
        system.add_principal("alice", "owner", replace=True)
        assert system.get_principal("alice").clearance == "owner"  # type: ignore[union-attr]
        assert system.get_principal("nobody") is None
        token = system.create_token("alice")
        status, who = system.resolve_token(token)
        assert status == "ok" and who is not None and who.id == "alice"
        expiring = system.create_token("alice", expires=1.0)
        assert system.resolve_token(expiring) == ("expired", None)
        assert system.resolve_token("tz_nope") == ("unknown", None)
        with pytest.raises(InvalidArgument, match="unknown principal"):
            system.create_token("ghost")
        assert [p.id for p in system.principals()] == ["alice"]
        assert system.revoke_tokens("alice") == 2
        system.create_token("alice")
        assert system.remove_principal("alice") and not system.remove_principal("alice")

        seqs = [system.append_audit("deny", function="f", label="public", detail={"i": i})
                for i in range(3)]
        system.append_audit("allow")
        assert seqs == sorted(seqs)
        assert [r.detail for r in system.audit(kinds=["deny"])] == [{"i": i} for i in range(3)]
        assert [r.kind for r in system.audit(since_seq=seqs[-1])] == ["allow"]
        assert system.audit(kinds=[]) == []
        schema = store.config.schema  # type: ignore[attr-defined]
        with admin(pg_cluster) as conn:
            for stmt in (f"UPDATE {schema}.sys_audit SET kind = 'x'",
                         f"DELETE FROM {schema}.sys_audit",
                         f"TRUNCATE {schema}.sys_audit"):
                with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                    conn.execute(stmt)

        # More lines than one internal page: limit counts visible lines only.
        for i in range(1200):
            system.append_log("f", f"r{i % 3}", "owner" if i % 2 else "public", f"line {i}")
        visible = system.logs(lambda lab: lab == "public", limit=700)
        assert len(visible) == 600 and all(r.label == "public" for r in visible)
        assert [r.text for r in system.logs(lambda lab: True, request_id="r1", limit=2)] == [
            "line 1", "line 4"
        ]


def test_plain_store(pg_cluster: PgCluster) -> None:
    with open_plain_store(pg_cluster.url(schema=fresh_schema(), pool_max="8")) as plain:
        plain.put("t", "k", {"b": 1, "a": 2})
        plain.put("t", "n", None)
        plain.put("t", "b", b"\x00bytes")
        assert plain.get("t", "k") == {"b": 1, "a": 2}
        assert plain.scan("t") == [("b", b"\x00bytes"), ("k", {"b": 1, "a": 2})]
        assert not plain.put("t", "k", 0, expect={"a": 2, "b": 1.0})
        plain.delete("t", "k")
        assert plain.get("t", "k") is None and plain.tables() == ["t"]

        def bump(_: int) -> None:
            for _ in range(25):
                while True:
                    cur = plain.get("c", "n")
                    if plain.put("c", "n", (cur or 0) + 1, expect=cur):
                        break

        with ThreadPoolExecutor(6) as ex:
            list(ex.map(bump, range(6)))
        assert plain.get("c", "n") == 150
