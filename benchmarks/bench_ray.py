"""Scaling on Ray (issue 8): throughput of a store-writing function with 1, 2 and 3 Ray nodes
(the local executor as reference), and the Hello Retail scenarios on PostgreSQL + Ray against
SQLite + local.

    python3 benchmarks/bench_ray.py [--quick] [--rounds N] [--out benchmarks/RESULTS.md]

Everything runs on this machine: a throwaway PostgreSQL cluster (initdb/pg_ctl in a temporary
folder, loopback, fsync off as in the tests) and a local Ray cluster (`ray.cluster_utils`,
every address on loopback, one CPU per node, no dashboard); nodes are added and removed
between measurements. Writes (or replaces) its own section of RESULTS.md, between the
`bench_ray` markers; the rest of the file is left as it is.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import pwd
import secrets
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.scenarios import _hello_retail as hr  # noqa: E402
from benchmarks.scenarios import (  # noqa: E402
    hello_retail_build_browse,
    hello_retail_update_purchase,
)
from benchmarks.scenarios._common import loadavg, wait_cpu_quiet  # noqa: E402

from trapeze import App  # noqa: E402

BEGIN = "<!-- bench_ray: begin (benchmarks/bench_ray.py rewrites this section) -->"
END = "<!-- bench_ray: end -->"
PG_BIN = Path(os.environ.get("TRAPEZE_PG_BIN", "/usr/lib/postgresql/15/bin"))
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
CLIENTS = 16

WRITER_MANIFEST = """
[app]
name = "bench-ray"

[labels]
bottom = ["public"]
public = ["top"]

[limits]
concurrency = 64
queue = 4096

[functions.writer]
handler = "functions/writer.py:writer"
timeout = 60
concurrency = 64
prefork = 4
"""
WRITER = '''
from trapeze.guest import kv


def writer(event, context):
    kv.put("bench", event["key"], {"n": event["n"], "by": context.function_name})
    return event["n"]
'''


# ---------------------------------------------------------------------- services
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL cluster; yields the URL of its `postgres` database."""
    prefix: list[str] = []
    uid, gid = os.getuid(), os.getgid()
    if os.geteuid() == 0:  # initdb refuses root
        entry = pwd.getpwnam("postgres")
        uid, gid = entry.pw_uid, entry.pw_gid
        prefix = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]
    root = Path(tempfile.mkdtemp(prefix="trapeze-bench-pg-"))
    os.chown(root, uid, gid)
    password = secrets.token_hex(8)
    (root / "pw").write_text(password + "\n")
    os.chown(root / "pw", uid, gid)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"LC_ALL": "C"}

    def run(*args: str) -> None:
        subprocess.run([*prefix, *args], check=True, env=env, cwd=root,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    port = _free_port()
    try:
        run(str(PG_BIN / "initdb"), "-D", str(root / "data"), "-U", "postgres",
            f"--pwfile={root / 'pw'}", "--auth-host=scram-sha-256", "--auth-local=trust",
            "-E", "UTF8", "--locale=C", "--no-sync")
        run(str(PG_BIN / "pg_ctl"), "-D", str(root / "data"), "-w", "-l",
            str(root / "server.log"), "-o",
            f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=400 "
            "-c shared_buffers=128MB", "start")
        yield f"postgresql://postgres:{password}@127.0.0.1:{port}/postgres"
    finally:
        if (root / "data" / "postmaster.pid").exists():
            subprocess.run([*prefix, str(PG_BIN / "pg_ctl"), "-D", str(root / "data"), "-m",
                            "fast", "-w", "stop"], env=env, cwd=root,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(root, ignore_errors=True)


def fresh_store(pg: str) -> str:
    return f"{pg}?schema=b{secrets.token_hex(5)}&pool_max=20"


class RayNodes:
    """A local Ray cluster whose number of nodes the benchmark changes."""

    def __init__(self) -> None:
        os.environ.update(RAY_ENV)
        import ray
        from ray.cluster_utils import Cluster

        self.ray = ray
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "include_dashboard": False, "node_ip_address": "127.0.0.1"})
        self.extra: list[Any] = []
        ray.init(address=self.cluster.address, log_to_driver=False)

    def resize(self, n: int) -> None:
        while 1 + len(self.extra) < n:
            self.extra.append(self.cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1"))
        while 1 + len(self.extra) > n:
            self.cluster.remove_node(self.extra.pop())
        self.cluster.wait_for_nodes()

    def close(self) -> None:
        self.ray.shutdown()
        self.cluster.shutdown()


def wait_nodes(rt: Any, n: int, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while len(rt._ray.nodes()) != n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{rt._ray.nodes()} ready, not {n} nodes")
        time.sleep(0.2)


# ---------------------------------------------------------------------- throughput
def writer_app(workdir: Path) -> App:
    app_dir = workdir / "writer-app"
    (app_dir / "functions").mkdir(parents=True, exist_ok=True)
    (app_dir / "trapeze.toml").write_text(WRITER_MANIFEST)
    (app_dir / "functions" / "writer.py").write_text(WRITER)
    for p in (workdir, app_dir, app_dir / "functions"):
        p.chmod(0o755)  # as root, children run as uids that own nothing
    for f in (app_dir / "trapeze.toml", app_dir / "functions" / "writer.py"):
        f.chmod(0o644)
    return App.load(app_dir)


def throughput(rt: Any, n: int) -> dict[str, float]:
    """`n` writer invocations from CLIENTS threads at once: invocations/s, p50/p99 ms."""
    for i in range(20):  # warm every node's zygote and the connection pools
        assert rt.invoke("writer", {"key": f"warm-{i}", "n": i}).ok
    counter = iter(range(n))
    lock = threading.Lock()
    latencies: list[float] = []
    failures: list[str] = []

    def client() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            t = time.perf_counter()
            r = rt.invoke("writer", {"key": f"k{i % 5000}", "n": i})
            dt_ = time.perf_counter() - t
            with lock:
                latencies.append(dt_)
                if not r.ok:
                    failures.append(f"{r.status}: {r.error}")

    wait_cpu_quiet()
    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if failures:
        raise RuntimeError(f"{len(failures)} invocations failed, e.g. {failures[0]}")
    latencies.sort()
    return {"rate": n / elapsed, "p50": 1000 * statistics.median(latencies),
            "p99": 1000 * latencies[int(0.99 * (len(latencies) - 1))]}


def bench_throughput(pg: str, nodes: RayNodes, workdir: Path, rounds: int,
                     n: int) -> dict[str, list[dict[str, float]]]:
    app = writer_app(workdir)
    out: dict[str, list[dict[str, float]]] = {}

    def record(name: str, m: dict[str, float]) -> None:
        out.setdefault(name, []).append(m)
        print(f"  {name:28} {m['rate']:7.1f} inv/s  p50 {m['p50']:6.1f} ms  "
              f"p99 {m['p99']:6.1f} ms  (load {loadavg()})", flush=True)

    for r in range(rounds):
        print(f"throughput, round {r + 1}/{rounds}", flush=True)
        with app.start(store=f"sqlite:///{workdir / f'local-{r}.db'}") as rt:
            record("local executor, SQLite", throughput(rt, n))
        with app.start(store=fresh_store(pg)) as rt:
            record("local executor, PostgreSQL", throughput(rt, n))
        order = (1, 2, 3) if r % 2 == 0 else (3, 2, 1)
        nodes.resize(order[0])
        with app.start(store=fresh_store(pg), executor="ray") as rt:
            for k in order:
                nodes.resize(k)
                wait_nodes(rt, k)
                record(f"Ray, {k} node{'s' if k > 1 else ''}, PostgreSQL", throughput(rt, n))
    return out


# ---------------------------------------------------------------------- Hello Retail
def executed(rt: Any) -> int:
    """Invocations run so far, nested ones included. With Ray, nested synchronous invokes run
    on the nodes, so the nodes count them (the gateway sees only what it sends out)."""
    if rt.executor == "ray":
        return sum(rt._ray.executed_per_node().values())
    return int(rt.invoker.executed)


def bench_hello_retail(pg: str, nodes: RayNodes, workdir: Path, rounds: int,
                       quick: bool) -> dict[str, dict[str, list[tuple[float, float, Any]]]]:
    nodes.resize(3)
    out: dict[str, dict[str, list[tuple[float, float, Any]]]] = {}
    modes = {
        "SQLite + local": None,
        "PostgreSQL + local": lambda _w: {"store": fresh_store(pg)},
        "PostgreSQL + Ray (3 nodes)": lambda _w: {"store": fresh_store(pg), "executor": "ray"},
    }
    for mod in (hello_retail_update_purchase, hello_retail_build_browse):
        for r in range(rounds):
            names = list(modes) if r % 2 == 0 else list(reversed(modes))
            for mode in names:
                hr.RUNTIME_OPTIONS = modes[mode]
                session = mod.setup(True, quick, workdir)
                try:
                    if session.rt.executor == "ray":
                        wait_nodes(session.rt, 3)
                    wait_cpu_quiet()
                    executed0 = executed(session.rt)
                    t0 = time.perf_counter()
                    transcript = mod.run(session)
                    ms = (time.perf_counter() - t0) * 1000
                    count = executed(session.rt) - executed0
                finally:
                    session.close()
                    hr.RUNTIME_OPTIONS = None
                out.setdefault(mod.NAME, {}).setdefault(mode, []).append(
                    (ms, count, transcript))
                print(f"  {mod.NAME} round {r + 1}: {mode:28} {ms:8.0f} ms  "
                      f"{count} invocations  (load {loadavg()})", flush=True)
    return out


# ---------------------------------------------------------------------- report
def render(tp: dict[str, list[dict[str, float]]],
           hrr: dict[str, dict[str, list[tuple[float, float, Any]]]], command: str,
           started: str, minutes: float, rounds: int, n: int) -> str:
    lines = [BEGIN, "", "## Scaling on Ray (issue 8)", "",
             f"Command: `{command}` · {started} · {minutes:.1f} min · "
             f"{platform.machine()} VM with {os.cpu_count()} vCPUs · load at the end "
             f"{loadavg()} (other engineers' suites ran on the same VM).", "",
             "Everything on this one machine: a throwaway PostgreSQL 15 (loopback, fsync off "
             "as in the tests) and a local Ray cluster (`ray.cluster_utils`, loopback, nodes "
             "added and removed between measurements). Medians over rounds.", "",
             f"### Throughput of a store-writing function ({n} invocations from {CLIENTS} "
             f"concurrent callers, {rounds} rounds)", "",
             "| executor | invocations/s | p50 ms | p99 ms |",
             "| --- | ---: | ---: | ---: |"]
    for name, ms in tp.items():
        lines.append(f"| {name} | {statistics.median(m['rate'] for m in ms):.0f} | "
                     f"{statistics.median(m['p50'] for m in ms):.1f} | "
                     f"{statistics.median(m['p99'] for m in ms):.1f} |")
    lines += ["", "### Hello Retail on PostgreSQL + Ray vs SQLite + local", "",
              "| scenario | SQLite + local ms | PostgreSQL + local ms | PostgreSQL + Ray ms | "
              "Ray / SQLite-local | # invocations | Ray responses = local ones |",
              "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for scenario, modes in hrr.items():
        local, pg_local = modes["SQLite + local"], modes["PostgreSQL + local"]
        ray_ = modes["PostgreSQL + Ray (3 nodes)"]
        a, b, c = (statistics.median(x[0] for x in runs) for runs in (local, pg_local, ray_))
        same = sum(x[2] == y[2] for x, y in zip(local, ray_, strict=True))
        inv = " / ".join(f"{statistics.median(x[1] for x in runs):.0f}"
                         for runs in (local, pg_local, ray_))
        lines.append(f"| {scenario} | {a:.0f} | {b:.0f} | {c:.0f} | {c / a:.2f} | {inv} | "
                     f"{same} of {len(local)} rounds |")
    lines += ["", "Reading. All the Ray nodes here are processes on the same two vCPUs as the "
              "gateway, PostgreSQL and the load generator, so more nodes cannot add compute: "
              "the throughput table shows what the Ray executor costs against the local one "
              "on the same hardware, not how far it scales (docs/scaling.md has the estimate "
              "for many machines). With one node, one agent process does the monitor work of "
              "every invocation besides Ray's own threads; more agents spread that work over "
              "processes. Hello Retail's requests are chains of short invocations; each "
              "top-level one pays an actor call on the way out and back, and each store, "
              "stream and workflow step a PostgreSQL round trip instead of an SQLite call. "
              "\"# invocations\" counts nested ones too (on the nodes, with Ray); the "
              "scenarios park a few executions for good, so counts differ slightly by timing. "
              "\"Ray responses = local ones\" compares every response legitimate principals "
              "got, request by request.", "", "Every run:", ""]
    for name, ms in tp.items():
        lines.append(f"* {name}: " + ", ".join(f"{m['rate']:.0f}/s" for m in ms))
    for scenario, modes in hrr.items():
        for mode, runs in modes.items():
            lines.append(f"* {scenario}, {mode}: " + ", ".join(f"{x[0]:.0f} ms" for x in runs))
    lines += ["", END]
    return "\n".join(lines)


def write_section(out: Path, section: str) -> None:
    text = out.read_text() if out.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    out.write_text(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, one round (a smoke run)")
    p.add_argument("--rounds", type=int, default=None, help="rounds (default 3, quick 1)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    args = p.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 3)
    n = 200 if args.quick else 600
    command = "python3 benchmarks/bench_ray.py" + "".join(
        " " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="trapeze-bench-ray-") as tmp, postgres() as pg:
        workdir = Path(tmp)
        workdir.chmod(0o755)
        nodes = RayNodes()
        try:
            tp = bench_throughput(pg, nodes, workdir, rounds, n)
            hrr = bench_hello_retail(pg, nodes, workdir, max(1, rounds - 1), args.quick)
        finally:
            nodes.close()
    section = render(tp, hrr, command, started, (time.monotonic() - t0) / 60, rounds, n)
    write_section(args.out, section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
