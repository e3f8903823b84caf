"""Stream throughput and workflow step overhead, IFC on vs the IFC-off baseline.

Not a test (pytest does not collect it). Run:

    python tests/workflows/bench_engines.py [records] [executions]

Both modes run the same app (tests/workflows/e2e_app) through the real runtime: with IFC the
functions run confined in per-invocation children at their labels over the faceted store;
the baseline runs them in warm unconfined workers over the plain store, one label.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from trapeze import App
from trapeze.runtime.streams import invoker_adapter
from trapeze.runtime.workflows import Engines

APP = Path(__file__).parent / "e2e_app"

STEPS = {
    "StartAt": "A",
    "States": {
        "A": {"Type": "Task", "Resource": "step_after", "Next": "B"},
        "B": {"Type": "Task", "Resource": "step_after", "Next": "C"},
        "C": {"Type": "Task", "Resource": "step_after", "End": True},
    },
}


def measure(ifc: bool, records: int, executions: int) -> dict[str, float]:
    from trapeze.policy.specs import WorkflowSpec

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/app.db"
        app = App.load(APP)
        with app.start(store=url, ifc=ifc) as rt:
            label = rt.lattice.bottom
            manifest: Any = rt.manifest
            workflows = dict(manifest.workflows)
            workflows["steps"] = WorkflowSpec("steps", Path("steps.json"), (), STEPS)
            view = type("M", (), {"streams": manifest.streams, "workflows": workflows,
                                  "functions": manifest.functions})()
            eng = Engines(url, rt.lattice, view, invoker_adapter(rt.invoker, rt.lattice),
                          stream_workers=8).start()
            try:
                t0 = time.perf_counter()
                for i in range(records):
                    eng.streams.put("events", {"i": i}, f"p{i % 8}", label)
                t_put = time.perf_counter() - t0
                assert eng.streams.wait_idle(600)
                t_all = time.perf_counter() - t0

                # One invocation alone, for the per-step overhead of the engine.
                t1 = time.perf_counter()
                for _ in range(executions):
                    assert rt.invoker.invoke("step_after", {"n": 1}, label=label).ok
                t_direct = (time.perf_counter() - t1) / executions
                t2 = time.perf_counter()
                arns = [eng.workflows.start("steps", None, {"n": 1}, label)["executionArn"]
                        for _ in range(executions)]
                for arn in arns:
                    assert eng.workflows.wait(arn, 120)
                t_wf = time.perf_counter() - t2
                t3 = time.perf_counter()
                for _ in range(executions):
                    arn = eng.workflows.start("steps", None, {"n": 1}, label)["executionArn"]
                    assert eng.workflows.wait(arn, 120)
                t_seq = (time.perf_counter() - t3) / executions
            finally:
                eng.close()
    return {
        "put_per_s": records / t_put,
        "end_to_end_per_s": records / t_all,
        "invoke_ms": t_direct * 1000,
        "workflow_3_steps_ms_each_concurrent": t_wf / executions * 1000,
        "workflow_3_steps_ms_alone": t_seq * 1000,
        "engine_ms_per_step": (t_seq - 3 * t_direct) / 3 * 1000,
    }


def main() -> None:
    records = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    executions = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    for ifc in (False, True):
        out = measure(ifc, records, executions)
        print(("ifc " if ifc else "base") + " " +
              " ".join(f"{k}={v:.1f}" for k, v in out.items()), flush=True)


if __name__ == "__main__":
    main()
