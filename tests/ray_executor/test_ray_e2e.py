"""End to end with the Ray executor: the platform app's invocations run on a 3-node local Ray
cluster, with the state in PostgreSQL. (The HTTP gateway suite and the engines' end-to-end
suite run on Ray as well: test_ray_gateway.py, test_ray_engines.py.)"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ray_executor.ray_helpers import NODES, copy_ray_app, store_url, wait_nodes
from trapeze import App
from trapeze.errors import ConfigError
from trapeze.runtime.invoker import WITHHELD_MESSAGE


@pytest.mark.parametrize("case", ["ok", "error", "withheld", "timeout"])
def test_each_status_comes_back_from_the_node(ray_platform: Any, case: str) -> None:
    rt = ray_platform
    if case == "ok":
        r = rt.invoke("echo", {"label": "top"}, as_label="user:a")
        # The label is the gateway's, whatever the payload says.
        assert r.status == "ok" and r.value["label"] == "user:a" and r.label == "user:a"
    elif case == "error":
        # (Not raiser's failure: the gateway suite counts the logs that one leaves.)
        r = rt.invoke("caller", {"function": "missing"}, as_label="public")
        assert r.status == "error" and "no function named 'missing'" in (r.error or "")
    elif case == "withheld":
        started = time.monotonic()
        r = rt.invoke("raiser", {"to": "top", "then": "sleep"}, as_label="public")
        # Replied at the raise, on the node, although the body sleeps on, detached.
        assert r.status == "withheld" and r.error == WITHHELD_MESSAGE and r.value is None
        assert r.label is None and time.monotonic() - started < 1.9
    else:
        r = rt.invoke("raiser", {"to": "public", "then": "sleep"}, as_label="public")
        assert r.status == "timeout", r


def test_invocations_are_spread_over_every_node(ray_platform: Any) -> None:
    rt = ray_platform
    before = rt._ray.executed_per_node()
    assert len(before) == NODES
    for i in range(20 * NODES):
        assert rt.invoke("echo", {"i": i}).ok
    after = rt._ray.executed_per_node()
    # One at a time, each picks one of the (equally idle) nodes at random: every node got
    # work (a node left out of 60 picks: probability ~1e-10).
    assert all(after[n] > before[n] for n in before), (before, after)


def test_function_to_function_sync_and_async(ray_platform: Any, ray_app: Any) -> None:
    rt = ray_platform
    r = rt.invoke("caller", {"function": "echo", "event": {"x": 1}}, as_label="user:a")
    assert r.status == "ok" and r.value["result"]["label"] == "user:a"
    low = rt.invoke("caller", {"function": "echo", "async": True, "label": "public"},
                    as_label="user:a")
    assert low.status == "error" and "below the current label" in (low.error or "")
    # Async invokes go from the node back to the gateway (the bridge) and out to the nodes,
    # at the caller's label.
    keys = [f"async-{time.monotonic_ns()}-{i}" for i in range(4)]
    r = ray_app.invoke("spawner", {"keys": keys}, as_label="secret")
    assert r.status == "ok" and len(r.value) == len(keys)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and \
            any(ray_app.view("secret").get("w", k) != k for k in keys):
        time.sleep(0.05)
    assert [ray_app.view("secret").get("w", k) for k in keys] == keys
    assert [ray_app.view("public").get("w", k) for k in keys] == [None] * len(keys)


def test_egress_channels_act_on_the_nodes(ray_platform: Any, web_server: Any) -> None:
    rt = ray_platform
    base = f"http://127.0.0.1:{web_server.server_address[1]}"
    hits = len(web_server.hits)
    ok = rt.invoke("egress", {"url": f"{base}/public/ray"}, as_label="public")
    assert ok.status == "ok" and ok.value == {"status": 200, "body": "page /public/ray"}
    down = rt.invoke("egress", {"url": f"{base}/public/b", "label": "admin"}, as_label="admin")
    assert down.status == "error" and "FlowError" in (down.error or "")
    assert len(web_server.hits) == hits + 1


def test_a_principals_token_over_http(ray_platform: Any) -> None:
    rt = ray_platform
    token = rt.add_principal("rayuser", label="user:rayuser")
    with httpx.Client(base_url=rt.url, timeout=30) as c:
        r = c.post("/echo", json={}, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.json()["label"] == "user:rayuser"
        assert r.json()["event"]["requestContext"]["principal"] == "rayuser"
        r = c.post("/raise", json={"to": "top", "then": "return"})
        assert r.status_code == 202 and r.headers["x-trapeze-status"] == "withheld"


def test_a_second_gateway_on_the_same_store(ray_platform: Any) -> None:
    """Gateways behind one address: a second one on the same PostgreSQL store and cluster
    accepts the first one's tokens, runs on the same nodes (with its own agents), and the
    asynchronous work its invocations start comes back through its own bridge."""
    a = ray_platform
    token = a.add_principal("second", label="user:second")
    with App(a.manifest).start(store=a.store_url, http=True, executor="ray") as b:
        wait_nodes(b, NODES)
        with httpx.Client(base_url=b.url, timeout=30) as c:
            r = c.post("/echo", json={}, headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200 and r.json()["label"] == "user:second"
        executed = b.invoker.executed
        r = b.invoke("caller", {"function": "echo", "async": True, "label": "admin"},
                     as_label="user:second")
        assert r.status == "ok"
        deadline = time.monotonic() + 20
        while b.invoker.executed < executed + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert b.invoker.executed == executed + 2  # the caller, then its async echo
    # The first gateway goes on serving after the second one left.
    assert a.invoke("echo", {}).ok


def test_ray_needs_a_postgresql_store(tmp_path: Path) -> None:
    app = App.load(copy_ray_app(tmp_path))
    with pytest.raises(ConfigError, match="keeps all state in PostgreSQL"):
        app.start(store=f"sqlite:///{tmp_path / 'app.db'}", executor="ray")
    out = subprocess.run(
        [sys.executable, "-m", "trapeze.cli", "run", str(tmp_path / "app"), "--executor", "ray",
         "--store", f"sqlite:///{tmp_path / 'app.db'}"], capture_output=True, text=True,
        timeout=60)
    assert out.returncode == 1
    assert "keeps all state in PostgreSQL" in out.stderr and "--store postgresql://" in out.stderr


def test_an_unreachable_cluster_is_a_clear_error_at_once(tmp_path: Path,
                                                        pg_cluster: Any) -> None:
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "trapeze.cli", "invoke", str(copy_ray_app(tmp_path)), "writer",
         "--executor", "ray", "--ray-address", f"127.0.0.1:{port}",
         "--store", store_url(pg_cluster)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}" in out.stderr, out.stderr
    assert "ray start --head" in out.stderr
    assert time.monotonic() - started < 30  # ray.init alone would retry for minutes


def test_trapeze_run_on_ray(tmp_path: Path, ray_cluster: Any, pg_cluster: Any) -> None:
    """`trapeze run APP --executor ray --ray-address ADDR --store postgresql://...`: a second
    gateway process on the same cluster serves HTTP and shuts down cleanly."""
    import os
    import signal

    app_dir = copy_ray_app(tmp_path)
    url = store_url(pg_cluster)
    proc = subprocess.Popen(
        [sys.executable, "-m", "trapeze.cli", "run", str(app_dir), "--executor", "ray",
         "--ray-address", ray_cluster.address, "--store", url, "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy())
    try:
        assert proc.stdout is not None
        banner = ""
        deadline = time.monotonic() + 180
        while "executor: ray" not in banner and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            banner += line
        assert f"executor: ray, {NODES} node(s)" in banner, banner
        assert "postgres:***@" in banner and pg_cluster.password not in banner
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest
    assert "shutting down" in rest
