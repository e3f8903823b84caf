"""The real platform against the reference interpreter (DESIGN §5-§6), sequential runs only.

Compared for every request: the reply (status, value, error class), the channel outputs,
the logs and the audit entries (kind, function, label) of its window, and at the end every
facet of every key (label, value, tombstone), newest first.
"""

from __future__ import annotations

from hypothesis import assume, given, settings

from ni.conftest import _common, ni_examples
from ni.harness import Worlds
from ni.interp import modelled
from ni.lang import Case, cases
from ni.properties import check_differential


@settings(max_examples=max(10, ni_examples() // 2), **_common)
@given(case=cases(concurrent=False))
def test_platform_matches_the_reference_interpreter(worlds: Worlds, case: Case) -> None:
    assume(modelled(case))
    check_differential(case, worlds.run_one(case), "A")
