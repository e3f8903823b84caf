"""How often a generated case catches each mutation, estimated offline in seconds.

    PYTHONPATH=tests python -m ni.estimate 1000

The real mutation tests (test_mutations.py) take about a second per case on the platform, so
tuning the generator against them is slow. Here each mutation is re-implemented as a *mutant
reference interpreter*, and a case counts as caught when the mutant's two worlds differ at
the observer (the NI property) or the mutant differs from the correct interpreter (the
differential test). Cases the interpreter cannot run (error-text probes) count as misses.

An estimate, not a measurement: the platform's mutations also change what the observer's own
view shows (read_ignores_labels and get_highest_label make `rt.view(l)` read above `l`, which
the real test catches on almost every case), and the mutants model the mutations from their
descriptions, not from their code. Not collected by pytest.
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings

from ni import nilib
from ni.interp import TOMB, Finished, Interpreter, Inv, Store, modelled
from ni.lang import (
    LABELS,
    Case,
    InvokeAsync,
    cases,
    consumer_line,
    flows,
)
from ni.trace import Trace, project


def _height(label: str) -> int:
    return sum(1 for other in LABELS if flows(other, label))


class _ReadTop(Store):
    def get(self, t: str, k: str, label: str) -> Any:
        return super().get(t, k, "top")

    def visible_facets(self, t: str, k: str, label: str) -> list[tuple[Any, str]]:
        return super().visible_facets(t, k, "top")

    def scan(self, t: str, label: str) -> list[tuple[str, Any]]:
        return super().scan(t, "top")


class _KeepHigher(Store):
    def put(self, t: str, k: str, value: Any, label: str) -> None:
        kept = [f for f in self.facets.get((t, k), []) if f[1] != label]
        self.facets[(t, k)] = [*kept, (value, label, next(self._seq))]


class _HighestGet(Store):
    def get(self, t: str, k: str, label: str) -> Any:
        fs = self.facets.get((t, k), [])
        if not fs:
            return None
        value = max(fs, key=lambda f: (_height(f[1]), f[2]))[0]
        return None if value is TOMB else value


class _DeleteAll(Store):
    def delete(self, t: str, k: str, label: str) -> None:
        self.facets[(t, k)] = []
        super().delete(t, k, label)


def _with_store(store: type[Store]) -> type[Interpreter]:
    class Mutant(Interpreter):
        def __init__(self, case: Case, world: str) -> None:
            super().__init__(case, world)
            self.store = store()

    return Mutant


class _RaiseLowers(Interpreter):
    def raise_label(self, inv: Inv, new: str) -> None:
        if new == inv.label:
            return
        inv.label = new
        self.window.audit.append(("raise", inv.function, new))
        if not flows(new, inv.bound):
            inv.withheld = True


class _ResponseAfterRaise(Interpreter):
    def reply(self, inv: Inv, outcome: Finished) -> tuple[str, Any, str]:
        inv.withheld, inv.bound = False, inv.label
        return super().reply(inv, outcome)


class _RefusedTextLeaks(Interpreter):
    def reply(self, inv: Inv, outcome: Finished) -> tuple[str, Any, str]:
        status, value, error = super().reply(inv, outcome)
        if status != "withheld":
            return status, value, error
        return status, None, (f"the invocation's label ... (refused: {outcome.status} "
                              f"{outcome.value!r} {outcome.error})")


class _BoundCheckSkipped(Interpreter):
    def send(self, inv: Inv, channel: str, v: int, regs: list[int], dst: int) -> None:
        self.window.outputs.append((channel, f"v{v}", str(v)))
        regs[dst] = nilib.num(200 if channel.startswith("web") else 1)


class _AsyncLowerLabel(Interpreter):
    def __init__(self, case: Case, world: str) -> None:
        super().__init__(case, world)
        self.starts: list[str] = []  # the start label of each invocation on the stack

    def invoke(self, slot: str, x: int, label: str, bound: str) -> tuple[str, Any, str]:
        self.starts.append(label)
        try:
            return super().invoke(slot, x, label, bound)
        finally:
            self.starts.pop()

    def tail(self, a: InvokeAsync, inv: Inv, regs: list[int]) -> None:
        if a.label is not None:
            return super().tail(a, inv, regs)
        start = self.starts[-1]
        self.guard(lambda: self.pending.append((a.slot, self.expr(a.e, regs), start)),
                   a.catch, regs, 0)


class _StreamBatchMixesLabels(Interpreter):
    # A lane's batch carries every record of its partition since the lane's last record.
    def __init__(self, case: Case, world: str) -> None:
        super().__init__(case, world)
        self.done: dict[tuple[str, str], int] = {}

    def stream_put(self, part: str, v: int, label: str) -> None:
        n = self.counts[label] = self.counts.get(label, 0) + 1
        start = self.done.get((part, label), 0)
        self.trace.stream.append((part, label, n, v))
        self.done[(part, label)] = len(self.trace.stream)
        for p, lab, _n, value in self.trace.stream[start:]:
            if p == part:
                self.window.logs.append(("c0", label, consumer_line(p, value, lab)))


MUTANTS: dict[str, type[Interpreter]] = {
    "read_ignores_labels": _with_store(_ReadTop),
    "write_keeps_higher": _with_store(_KeepHigher),
    "get_highest_label": _with_store(_HighestGet),
    "delete_removes_lower": _with_store(_DeleteAll),
    "raise_lowers": _RaiseLowers,
    "response_after_raise": _ResponseAfterRaise,
    "refused_text_leaks": _RefusedTextLeaks,
    "bound_check_skipped": _BoundCheckSkipped,
    "async_lower_label": _AsyncLowerLabel,
    "stream_batch_mixes_labels": _StreamBatchMixesLabels,
}


def generated(n: int) -> list[Case]:
    """n sequential cases as the property draws them (Hypothesis' own distribution)."""
    out: list[Case] = []

    @settings(max_examples=n, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(cases(concurrent=False))
    def collect(case: Case) -> None:
        out.append(case)

    collect()
    return out


def estimate(n: int) -> dict[str, tuple[float, float]]:
    """mutation -> (share of cases caught by NI or differential, share caught by NI)."""
    drawn = generated(n)
    either: Counter[str] = Counter()
    by_ni: Counter[str] = Counter()
    for case in drawn:
        if not modelled(case):
            continue
        good = Interpreter(case, "A").run()
        want = project(good, case, "top", detail=False)
        for name, mutant in MUTANTS.items():
            ta: Trace = mutant(case, "A").run()
            tb: Trace = mutant(case, "B").run()
            ni = project(ta, case, case.observer) != project(tb, case, case.observer)
            diff = (project(ta, case, "top", detail=False) != want or ta.raw != good.raw
                    or ta.stream != good.stream)
            by_ni[name] += ni
            either[name] += ni or diff
    return {name: (either[name] / len(drawn), by_ni[name] / len(drawn)) for name in MUTANTS}


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    print(f"{'mutation':28s} {'NI or diff':>10s} {'NI alone':>9s}   ({n} cases)")
    for name, (either, ni) in estimate(n).items():
        print(f"{name:28s} {either:10.1%} {ni:9.1%}")


if __name__ == "__main__":
    main()
