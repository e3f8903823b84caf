"""Attacks through the runtime with the Ray executor: the confinement on a Ray node is the
local one (a representative part of tests/attacks: network, files, exec, forged frames), and
a confined function cannot reach Ray itself — not its GCS or raylet ports, not its unix
sockets, not its session files or shared-memory object store, not through an inherited
descriptor or an environment variable."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

EPERM, EACCES, ENOENT, EROFS = errno.EPERM, errno.EACCES, errno.ENOENT, errno.EROFS


def attack(rt: Any, which: str, **event: Any) -> Any:
    r = rt.invoke("attack", {"attack": which, **event}, as_label="public")
    assert r.status == "ok", r
    return r.value


# --- the attack suite's entry points, on the nodes -----------------------------------------

def test_no_socket_to_loopback(ray_app: Any) -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    try:
        assert attack(ray_app, "tcp_loopback", port=srv.getsockname()[1])["errno"] == EPERM
        assert attack(ray_app, "udp_loopback", port=9)["errno"] == EPERM
    finally:
        srv.close()


@pytest.mark.parametrize("path", ["/etc/shadow", "/proc/1/environ"])
def test_no_reading_host_files(ray_app: Any, path: str) -> None:
    assert attack(ray_app, "read_file", path=path)["errno"] == EACCES


def test_no_writing_outside_private_tmp(ray_app: Any) -> None:
    # The children's view is read-only but for their tmp (EROFS), Landlock behind it.
    assert attack(ray_app, "write_file", path="/var/tmp/trapeze-ray-pwned")["errno"] == EROFS
    assert attack(ray_app, "tmp_works") == "fine"


def test_no_exec(ray_app: Any) -> None:
    assert attack(ray_app, "exec_sh")["errno"] in (EACCES, EPERM)
    assert attack(ray_app, "syscall", name="socket")["errno"] == EPERM


@pytest.mark.parametrize("body", [
    {"t": "call", "id": 1, "op": "kv.get", "args": {"table": "t", "key": "k"}, "label": "top"},
    {"t": "result", "ok": True, "value": 1, "label": "bottom"},
], ids=["call-claims-label", "result-claims-label"])
def test_forged_label_frames_kill_the_child(ray_app: Any, body: dict[str, Any]) -> None:
    r = ray_app.invoke("attack", {"attack": "raw_frame", "body": body}, as_label="public")
    assert r.status == "error" and "protocol violation" in (r.error or ""), r


# --- Ray itself -----------------------------------------------------------------------------

@pytest.fixture
def ray_targets(ray_cluster: Any) -> Iterator[dict[str, Any]]:
    """Every way in that the test process can see: each node's ports and sockets, the
    session's files, and the object store's shared memory (with a readable file planted
    there, standing for an object-store segment)."""
    import ray

    gcs_host, gcs_port = ray_cluster.address.rsplit(":", 1)
    tcp: list[list[Any]] = [[gcs_host, int(gcs_port)]]  # lists: events are JSON values
    unix: list[str] = []
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        host = n["NodeManagerAddress"]
        for port_key in ("NodeManagerPort", "ObjectManagerPort", "MetricsExportPort"):
            if n.get(port_key):
                tcp.append([host, int(n[port_key])])
        unix += [n["RayletSocketName"], n["ObjectStoreSocketName"]]
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    paths = [*unix, str(session / "session.json"), str(session / "logs")]
    planted = Path("/dev/shm/trapeze-ray-object")
    planted.write_bytes(b"object-store segment")
    planted.chmod(0o644)
    shm = [str(p) for p in Path("/dev/shm").iterdir()]
    try:
        yield {"tcp": tcp, "unix": unix, "paths": paths + shm,
               "dirs": ["/dev/shm", str(session), "/tmp/ray"]}
    finally:
        planted.unlink()


def test_a_confined_function_cannot_reach_ray(ray_app: Any, ray_targets: dict[str, Any]) -> None:
    r = ray_app.invoke("ray_attack", ray_targets, as_label="public")
    assert r.status == "ok", r
    out = r.value
    # No socket at all (seccomp), whatever the address: GCS, raylets, object managers.
    assert len(out["tcp"]) >= 4 and all(x.get("errno") == EPERM for x in out["tcp"]), out["tcp"]
    assert out["unix"] and all(x.get("errno") == EPERM for x in out["unix"]), out["unix"]
    # Ray's session directory (its sockets, logs, session.json) is under the host's /tmp,
    # which the child does not see at all: its /tmp is private.
    paths = ray_targets["paths"]
    for kind in ("stat", "read"):
        seen = [(p, x) for p, x in zip(paths, out[kind], strict=True) if p.startswith("/tmp/")]
        assert seen and all(x.get("errno") == ENOENT for _, x in seen), (kind, seen)
    # /dev/shm (where shared-memory object stores live) is covered by an empty tmpfs in the
    # children's view (Landlock refuses reading it, but not stat()): neither reading nor
    # stat() finds any of the host's segments, even by a name known in advance.
    for kind in ("stat", "read"):
        shm = [(p, x) for p, x in zip(paths, out[kind], strict=True)
               if p.startswith("/dev/shm/")]
        assert shm and all(x.get("errno") == ENOENT for _, x in shm), (kind, shm)
    assert all(x.get("errno") in (ENOENT, EACCES) for x in out["listdir"]), out["listdir"]
    # Nothing inherited: only stdin, the log pipe (stdout, stderr) and the monitor's channel.
    assert out["fds"] == [0, 1, 2, 3]
    assert not [k for k in out["env"] if k.startswith("RAY") or "REDIS" in k]


def test_the_node_agent_environment_does_not_leak(ray_app: Any) -> None:
    """The agent's process has Ray's variables; the zygote starts from a clean environment."""
    r = ray_app.invoke("ray_attack", {}, as_label="public")
    assert r.status == "ok"
    assert set(r.value["env"]) <= {"PATH", "LANG", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                   "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS", "LC_CTYPE"}
    assert os.environ.get("RAY_USAGE_STATS_ENABLED") == "0"  # the test process has them


def test_the_node_an_invocation_lands_on_counts_nothing(ray_app: Any) -> None:
    """Review, session 6: nodes were picked in turn among the least loaded, by a counter of
    every invocation of every label, so the node of a public invocation (which its code
    could tell by its uid block, before children saw no uid) told how many invocations had
    run since the last one: a number a high function sets with invoke_async. Ties are now
    broken at random. One after the other on an idle cluster, in turn meant never the same
    node twice in a row; at random, a third of the time (fewer than 4 of 59, where in turn
    gives none, with probability 1.8e-7; "at least 5" failed with 1.3e-6). Which node ran
    each call is read from the executor's counts."""
    nodes = []
    for _ in range(60):
        before = ray_app._ray.executed_per_node()
        assert attack(ray_app, "tmp_works") == "fine"
        after = ray_app._ray.executed_per_node()
        ran = [n for n in after if after[n] != before.get(n, 0)]
        assert len(ran) == 1, (before, after)
        nodes.append(ran[0])
    assert len(set(nodes)) == 3, nodes
    repeats = sum(a == b for a, b in zip(nodes, nodes[1:], strict=False))
    assert repeats >= 4, nodes
