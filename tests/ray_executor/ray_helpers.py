"""Fixtures of the Ray executor tests: a 3-node local Ray cluster and apps started on it.

The cluster is Ray's own test utility (`ray.cluster_utils.Cluster`): three nodes on this
machine, one CPU each, no dashboard, every address on the loopback interface, started on first use
(about 10 s) and stopped after this folder's last test. The store is a fresh schema in the
session's throwaway PostgreSQL cluster (tests/pg_cluster.py).

The cluster and the runtimes are package-scoped: they stop after the last test of this folder,
so the rest of the session does not share the machine with them.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parents[1]

# Set for the cluster's processes (they inherit the environment of the process that starts
# them) and for this one, before Ray is imported; restored when the cluster stops.
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",  # no usage report (and no network attempt to send one)
    # Ray replaces 127.0.0.1 by the machine's routable address unless it believes it runs
    # where clusters are not supported; that switch keeps every Ray address on loopback.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}
# Fast failure detection: the node-loss test removes a node and waits for Ray to notice.
SYSTEM_CONFIG = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 500,
    "health_check_failure_threshold": 4,
}
NODES = 3


def load_module(name: str, path: Path) -> Any:
    """Import another test folder's helper module by path (the folders are not packages)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# The platform tests' app and its real HTTP and SMTP servers (tests/platform/conftest.py).
platform = load_module("trapeze_platform_fixtures", TESTS / "platform" / "conftest.py")
web_server = platform.web_server
smtp_server = platform.smtp_server
make_app = platform.make_app


class RayCluster:
    def __init__(self) -> None:
        import ray
        from ray.cluster_utils import Cluster

        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "include_dashboard": False, "node_ip_address": "127.0.0.1",
            "_system_config": SYSTEM_CONFIG,
        })
        self.workers = [self.add_node() for _ in range(NODES - 1)]
        self.cluster.wait_for_nodes()
        ray.init(address=self.cluster.address, log_to_driver=False)

    @property
    def address(self) -> str:
        return str(self.cluster.address)

    def add_node(self) -> Any:
        return self.cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")

    def alive(self) -> list[str]:
        import ray

        return [n["NodeID"] for n in ray.nodes() if n.get("Alive")]

    def shutdown(self) -> None:
        import ray

        ray.shutdown()
        self.cluster.shutdown()


@pytest.fixture(scope="package")
def ray_cluster() -> Iterator[RayCluster]:
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed (pip install -e '.[test]')")
    saved = {k: os.environ.get(k) for k in RAY_ENV}
    os.environ.update(RAY_ENV)
    import ray._private.ray_constants as constants

    constants.ENABLE_RAY_CLUSTER = False  # in case Ray was imported before the variable was set
    cluster = RayCluster()
    try:
        yield cluster
    finally:
        cluster.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def store_url(pg_cluster: Any) -> str:
    """A fresh, empty store: its own schema in the session's PostgreSQL database."""
    return str(pg_cluster.url(schema=f"ray_{os.getpid()}_{secrets.token_hex(4)}"))


def wait_nodes(rt: Any, n: int, timeout: float = 120.0) -> list[str]:
    """Wait until the runtime's executor has `n` ready node agents."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        nodes = rt._ray.nodes()
        if len(nodes) == n:
            return list(nodes)
        time.sleep(0.2)
    raise AssertionError(f"the executor has {rt._ray.nodes()} ready, not {n} nodes")


@pytest.fixture(scope="package")
def ray_platform(tmp_path_factory: pytest.TempPathFactory, web_server: Any, smtp_server: Any,
                 ray_cluster: RayCluster, pg_cluster: Any) -> Iterator[Any]:
    """The platform tests' app (tests/platform/app) on the Ray executor, with HTTP."""
    controller, _ = smtp_server
    app = make_app(tmp_path_factory.mktemp("ray-platform"), web_server.server_address[1],
                   controller.port)
    with app.start(store=store_url(pg_cluster), http=True, executor="ray") as rt:
        wait_nodes(rt, NODES)
        yield rt


def copy_ray_app(dest: Path) -> Path:
    """tests/ray_executor/app, with the attack suite's handlers beside its own."""
    app_dir = dest / "app"
    shutil.copytree(Path(__file__).parent / "app", app_dir)
    shutil.copy(TESTS / "attacks" / "app" / "attacks.py", app_dir / "functions" / "attacks.py")
    return app_dir


@pytest.fixture(scope="package")
def ray_app(tmp_path_factory: pytest.TempPathFactory, ray_cluster: RayCluster,
            pg_cluster: Any) -> Iterator[Any]:
    """tests/ray_executor/app on the Ray executor (no HTTP)."""
    from trapeze import App

    app = App.load(copy_ray_app(tmp_path_factory.mktemp("ray-app")))
    with app.start(store=store_url(pg_cluster), executor="ray") as rt:
        wait_nodes(rt, NODES)
        yield rt
