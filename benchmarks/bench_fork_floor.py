"""The floor under a confined invocation on this machine: what fork, exit and page faults cost.

`python3 benchmarks/bench_fork_floor.py` prints

* the CPU of one fork + immediate exit + reap of a process the size of a zygote (it imports
  what a zygote imports, freezes its heap like one, and forks with libc's fork() like one),
  with the page faults each side takes: no confinement, no import, no invocation;
* the cost of one copy-on-write fault and one zero-fill fault (a child writing one byte per
  page of 64 MiB its parent populated, then of 64 MiB it mapped itself);
* what those imply: the most invocations per second the machine's cores could sustain if a
  child did nothing at all, and how many page faults a child may take within the
  1,000-invocations/s budget (issue 3).

Each child of a real invocation takes ~480 faults before it serves (fork, confinement, the
handler's import, warm-up; RESULTS.md "Confined invocations"), so the budget is read against
that.
"""

from __future__ import annotations

import gc
import mmap
import os
import resource
import sys
import time

N_FORKS = 2000
REGION = 64 << 20
PAGE = mmap.PAGESIZE


def _cpu() -> tuple[float, int, int]:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime, me.ru_minflt,
            kids.ru_minflt)


def fork_exit_floor() -> tuple[float, float, float, float]:
    """(CPU ms per fork+exit+reap, wall ms, parent faults, child faults) per fork."""
    import trapeze.guest  # noqa: F401  - what a zygote holds
    import trapeze.guest.context  # noqa: F401
    from trapeze.sandbox import syscalls as sc
    from trapeze.sandbox import zygote  # noqa: F401

    gc.collect()
    gc.freeze()
    c0, t0 = _cpu(), time.perf_counter()
    for _ in range(N_FORKS):
        pid = sc.fork_bare()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    c1, t1 = _cpu(), time.perf_counter()
    return ((c1[0] - c0[0]) * 1000 / N_FORKS, (t1 - t0) * 1000 / N_FORKS,
            (c1[1] - c0[1]) / N_FORKS, (c1[2] - c0[2]) / N_FORKS)


def fault_costs() -> tuple[float, float]:
    """(µs per copy-on-write fault, µs per zero-fill fault), measured in a child."""
    parent = mmap.mmap(-1, REGION, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for off in range(0, REGION, PAGE):
        parent[off] = 1
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        pages = REGION // PAGE
        t0 = time.perf_counter()
        for off in range(0, REGION, PAGE):
            parent[off] = 2  # copy-on-write: the page is shared with the parent
        t1 = time.perf_counter()
        own = mmap.mmap(-1, REGION, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        t2 = time.perf_counter()
        for off in range(0, REGION, PAGE):
            own[off] = 2  # zero-fill: a fresh page
        t3 = time.perf_counter()
        # The loop's own cost, without faults: the same writes again.
        for off in range(0, REGION, PAGE):
            own[off] = 3
        t4 = time.perf_counter()
        loop = t4 - t3
        os.write(w, f"{(t1 - t0 - loop) / pages * 1e6} {(t3 - t2 - loop) / pages * 1e6}".encode())
        os._exit(0)
    os.close(w)
    out = os.read(r, 200).decode().split()
    os.waitpid(pid, 0)
    return float(out[0]), float(out[1])


def main() -> None:
    cores = len(os.sched_getaffinity(0))
    cow, zero = fault_costs()
    cpu, wall, pfaults, cfaults = fork_exit_floor()
    rss = next(line.split()[1] for line in open("/proc/self/status")
               if line.startswith("VmRSS:"))
    print(f"cores: {cores}; load average: {' '.join(open('/proc/loadavg').read().split()[:3])}")
    print(f"copy-on-write fault: {cow:.2f} µs/page; zero-fill fault: {zero:.2f} µs/page")
    print(f"fork + exit + reap of a zygote-sized process ({int(rss) // 1024} MiB resident): "
          f"{cpu:.3f} ms CPU ({wall:.3f} ms wall), faults per fork: parent {pfaults:.0f}, "
          f"child {cfaults:.0f}")
    print(f"ceiling with children that do nothing: {cores * 1000 / cpu:,.0f} invocations/s")
    budget = cores * 1000 / 1000  # ms of CPU per invocation at 1,000/s
    left = budget - cpu
    print(f"at 1,000 invocations/s: {budget:.1f} ms of CPU per invocation; after fork and "
          f"exit {left:.2f} ms for confinement, import, serving and the monitor together: "
          f"the CPU of {max(0.0, left) * 1000 / cow:.0f} copy-on-write faults")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
