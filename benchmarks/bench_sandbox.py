"""Confined (pre-forked) invocations vs the warm-worker baseline: latency and throughput.

    python benchmarks/bench_sandbox.py [--n 1000] [--concurrency 4] [--seconds 5]

Not part of the test suite. Prints a markdown table. Latency is measured one invocation at
a time with a short pause between invocations, so that a pre-forked child is waiting (the
steady state of a function that is not saturated); throughput is measured closed-loop with
several callers, where the zygote's fork rate is what limits the confined side.

CPU per invocation is measured over the throughput run: the worker's (or the zygote's and
all its reaped children's) CPU time from /proc/<pid>/stat plus the monitor process's own,
divided by the invocations. On a loaded machine it is steadier than wall-clock figures, and
on 2 cores it bounds throughput: 1,000 invocations/s needs <= 2 ms of CPU per invocation.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from trapeze.sandbox import Sandbox, SandboxSpec
from trapeze.sandbox.baseline import WarmWorker

HANDLERS = '''
from trapeze.guest import kv


def noop(event, context):
    return None


def store10(event, context):
    for i in range(5):
        kv.put("bench", f"k{i}", i)
    return [kv.get("bench", f"k{i}") for i in range(5)]
'''


class Store:
    def __init__(self) -> None:
        self.data: dict[tuple[str, str], Any] = {}

    def __call__(self, op: str, args: dict[str, Any]) -> Any:
        if op == "kv.put":
            self.data[(args["table"], args["key"])] = args["value"]
            return True
        if op == "kv.get":
            return self.data.get((args["table"], args["key"]))
        raise ValueError(op)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def latency(runner: Any, n: int, pause: float) -> list[float]:
    store = Store()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        res = runner.run({}, {}, store)
        out.append(time.perf_counter() - t0)
        assert res.status == "ok", res
        if pause:
            time.sleep(pause)
    return out


CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """utime + stime + cutime + cstime of `pid` (its reaped children included), seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / CLK_TCK


def throughput(runner: Any, concurrency: int, seconds: float, pid: int) -> tuple[float, float]:
    """(invocations per second, CPU ms per invocation: `pid`'s and this process's)."""
    store = Store()
    count = [0] * concurrency
    stop = time.perf_counter() + seconds

    def loop(i: int) -> None:
        while time.perf_counter() < stop:
            res = runner.run({}, {}, store)
            assert res.status == "ok", res
            count[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(concurrency)]
    cpu0, own0 = process_cpu(pid), time.process_time()
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    time.sleep(0.3)  # let the zygote reap the last children
    cpu = process_cpu(pid) - cpu0 + time.process_time() - own0
    n = sum(count)
    return n / elapsed, cpu / n * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--pause", type=float, default=0.003)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--prefork", type=int, default=8)
    args = ap.parse_args()
    app = Path(tempfile.mkdtemp(prefix="trapeze-bench-"))
    app.chmod(0o755)  # confined children run as unprivileged uids
    (app / "bench.py").write_text(HANDLERS)
    rows = []
    load_before = " ".join(open("/proc/loadavg").read().split()[:3])
    for fn in ("noop", "store10"):
        spec = SandboxSpec(fn, app, f"bench:{fn}", prefork=args.prefork)
        with WarmWorker(spec) as warm:
            latency(warm, 50, 0)
            w = latency(warm, args.n, args.pause)
            assert warm._proc is not None
            w_tp, w_cpu = throughput(warm, args.concurrency, args.seconds, warm._proc.pid)
        with Sandbox(spec) as sb:
            latency(sb, 50, args.pause)
            c = latency(sb, args.n, args.pause)
            assert sb._proc is not None
            c_tp, c_cpu = throughput(sb, args.concurrency, args.seconds, sb._proc.pid)
            print(f"{fn}: {sb.surplus_killed} extra children forked but not needed")
        rows.append((fn, w, c, w_tp, c_tp, w_cpu, c_cpu))
    load = open("/proc/loadavg").read().split()[:3]
    print(f"\nload average before/after: {load_before} / {' '.join(load)}")
    print(f"n={args.n} sequential (pause {args.pause * 1000:g} ms), throughput with "
          f"{args.concurrency} callers for {args.seconds:g} s, prefork={args.prefork}\n")
    print("| handler | warm p50 ms | confined p50 ms | added p50 ms | warm p99 ms "
          "| confined p99 ms | warm inv/s | confined inv/s | warm CPU ms/inv "
          "| confined CPU ms/inv |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for fn, w, c, w_tp, c_tp, w_cpu, c_cpu in rows:
        wp50, cp50 = statistics.median(w) * 1e3, statistics.median(c) * 1e3
        print(f"| {fn} | {wp50:.3f} | {cp50:.3f} | {cp50 - wp50:+.3f} | "
              f"{pct(w, 99) * 1e3:.3f} | {pct(c, 99) * 1e3:.3f} | {w_tp:.0f} | {c_tp:.0f} | "
              f"{w_cpu:.2f} | {c_cpu:.2f} |")


if __name__ == "__main__":
    main()
