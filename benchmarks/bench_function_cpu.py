"""CPU per confined invocation of Hello Retail functions, split by process.

    python3 benchmarks/bench_function_cpu.py [N]

Starts the Hello Retail app under Trapeze (embedded SQLite store, no HTTP), calls each
function below N times one after the other (after 20 untimed calls), and reports per
invocation: wall time, the CPU of the function's zygote itself (forking, bookkeeping), of
its children (confinement, the handler's import, the invocation, exit: utime+stime of the
reaped children from /proc/<zygote>/stat) and of this process (monitor, store, invoker).
`success` imports nothing of the app; `categories` and `get_price` import the app's shared
`functions/retail.py` (json, datetime, a regular expression), as most handlers do.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from trapeze import App  # noqa: E402

HZ = os.sysconf("SC_CLK_TCK")
CALLS = [
    ("success", {}, "owner"),
    ("categories", {"httpMethod": "GET", "path": "/categories"}, "public"),
    ("get_price", {"id": "1"}, "public"),
]


def zygotes_cpu() -> tuple[float, float]:
    """(own, reaped children) CPU seconds of every direct child process of this one."""
    me = os.getpid()
    own = kids = 0
    for pid in open(f"/proc/{me}/task/{me}/children").read().split():
        try:
            stat = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        own += int(fields[11]) + int(fields[12])
        kids += int(fields[13]) + int(fields[14])
    return own / HZ, kids / HZ


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    app = App.load(ROOT / "examples" / "hello_retail")
    with tempfile.TemporaryDirectory() as tmp:
        rt = app.start(http=False, ifc=True, store=f"sqlite:///{tmp}/app.db")
        try:
            print(f"{n} calls each; load average {os.getloadavg()}")
            print("| function | wall ms/inv | zygote CPU ms | children CPU ms | "
                  "monitor CPU ms | total CPU ms |")
            print("| --- | ---: | ---: | ---: | ---: | ---: |")
            for function, event, label in CALLS:
                for _ in range(20):
                    rt.invoke(function, event, as_label=label)
                time.sleep(1)  # let the pool refill
                own0, kids0 = zygotes_cpu()
                mon0, wall0 = time.process_time(), time.monotonic()
                for _ in range(n):
                    result = rt.invoke(function, event, as_label=label)
                    assert result.status == "ok", result
                wall = (time.monotonic() - wall0) / n * 1000
                own1, kids1 = zygotes_cpu()
                mon = (time.process_time() - mon0) / n * 1000
                zyg, kids = (own1 - own0) / n * 1000, (kids1 - kids0) / n * 1000
                print(f"| {function} | {wall:.2f} | {zyg:.2f} | {kids:.2f} | {mon:.2f} | "
                      f"{zyg + kids + mon:.2f} |")
        finally:
            rt.close()


if __name__ == "__main__":
    main()
