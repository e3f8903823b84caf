"""TSNI of the real platform, tested à la "Testing Noninterference, Quickly" (Hritcu et al.).

Each example: random guest programs in four confined function slots, an initial store, a list
of requests at various labels and an observer label `l`. World B's store differs from world
A's only in facets above `l`, and requests from above `l` carry different events. Both worlds
run the same requests (those above `l` concurrently with the rest in half of the examples);
everything observable at `l` must be equal. Sequential runs are also checked against the
reference interpreter (the differential test, see test_differential.py).
"""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import example, given, settings

from ni.conftest import _common, ni_examples
from ni.corpus import CORPUS, COVERAGE_CASE
from ni.harness import COVERAGE, COVERAGE_RUNS, RUNS_KEY, Worlds
from ni.lang import Case, cases
from ni.properties import check_case


@settings(max_examples=ni_examples(), **_common)
@given(case=cases())
def test_noninterference(worlds: Worlds, case: Case) -> None:
    with worlds.counting():
        check_case(worlds, case)


for _c in CORPUS.values():  # the real platform must pass the hand-written leak shapes too
    test_noninterference = example(case=_c)(test_noninterference)
test_noninterference = example(case=COVERAGE_CASE)(test_noninterference)


# Every operation and every outcome must have happened during the property runs above, or
# the search was trivial. (Runs after test_noninterference: pytest keeps file order.)
REQUIRED = [
    "op: kv.get", "op: kv.put", "op: kv.delete", "op: kv.scan", "op: kv.facets",
    "op: label.raise", "op: label.current", "op: functions.invoke",
    "op: functions.invoke_async", "op: http.request", "op: channel.send", "op: streams.put",
    "op error: label.raise -> FlowError", "op error: http.request -> FlowError",
    "op error: channel.send -> FlowError", "op error: functions.invoke -> InvocationError",
    "op error: streams.put -> FlowError", "op: workflows.start",
    "op error: workflows.start -> ExecutionAlreadyExists",
    "workflow: succeeded", "workflow: failed", "workflow: label rose",
    "outcome: returned", "outcome: raised", "outcome: timed out", "outcome: crashed",
    "outcome: withheld reply",
    "invocation: top-level", "invocation: sync-nested", "invocation: async",
    "invocation: stream consumer",
]


def coverage_report() -> str:
    runs = COVERAGE_RUNS[RUNS_KEY]
    lines = [f"| what the platform did (world A) | runs (of {runs}) | times |",
             "|---|---:|---:|"]
    for key, n in sorted(COVERAGE.items()):
        lines.append(f"| {key} | {COVERAGE_RUNS[key]} | {n} |")
    return "\n".join(lines)


def test_coverage_of_the_search() -> None:
    report = coverage_report()
    print("\n" + report)
    if path := os.environ.get("TRAPEZE_NI_REPORT"):
        Path(path).write_text(report + "\n")
    if not COVERAGE:
        return  # the property test was deselected
    missing = [key for key in REQUIRED if COVERAGE[key] == 0]
    assert not missing, f"the generator never exercised: {missing}\n{report}"
