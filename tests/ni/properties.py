"""The two checks every generated case goes through: noninterference and the differential."""

from __future__ import annotations

from hypothesis import event

from ni.harness import Worlds
from ni.interp import interpret, modelled
from ni.lang import Case, show_case
from ni.trace import Trace, first_difference, project


class NIViolation(AssertionError):
    """The observer at `case.observer` can tell the two worlds apart."""


class ModelMismatch(AssertionError):
    """The platform's observations differ from the reference interpreter's."""


def check_noninterference(case: Case, ta: Trace, tb: Trace) -> None:
    pa = project(ta, case, case.observer)
    pb = project(tb, case, case.observer)
    if pa != pb:
        raise NIViolation(
            f"observer {case.observer} tells the worlds apart\n{show_case(case)}\n"
            f"first difference: {first_difference(pa, pb)}"
        )


def check_differential(case: Case, trace: Trace, world: str) -> None:
    expected = interpret(case, world)
    got = project(trace, case, "top", detail=False)
    want = project(expected, case, "top", detail=False)
    if got != want or trace.raw != expected.raw:
        where = (first_difference(got, want) if got != want
                 else f"raw facets:\n  platform: {trace.raw}\n  model:    {expected.raw}")
        raise ModelMismatch(
            f"world {world}: the platform differs from the reference interpreter\n"
            f"{show_case(case)}\nfirst difference (platform vs model): {where}"
        )


def check_case(worlds: Worlds, case: Case, *, differential: bool = True) -> None:
    """Run `case` in both worlds; NI always, the differential when the run is sequential."""
    event(f"observer {case.observer}")
    event("concurrent" if case.concurrent else "sequential")
    ta, tb = worlds.run(case)
    for _label, status, _v, _e in ta.responses:
        event(f"reply: {status}")
    check_noninterference(case, ta, tb)
    if differential and not case.concurrent and modelled(case):
        event("differential: checked")
        check_differential(case, ta, "A")
        check_differential(case, tb, "B")
