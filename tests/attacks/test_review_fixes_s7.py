"""Review of the session-7 error-path fixes (5d5b45e): what one of them broke, and its fix.

REGRESSION D1-margin (runtime/invoker.py, invoke_sync / _callee_margin_s). A synchronous
callee's deadline became min(own, caller's deadline - margin) with margin = clamp(0.25 x the
caller's remaining time, 0.1 s, 1 s), taken again at every level of a nested chain, so the
time left shrank geometrically: with 1 s timeouts the budgets were 1, 0.75, 0.56, 0.42,
0.32, 0.22, 0.12, 0.02 and -0.08 s at depths 0..8, and a chain of MAX_DEPTH (8) nested
invokes of a function that does no work at all failed at once ("no child became ready").

Fixed: the margin is taken only where a response declassifier could release a callee's
reply to the caller's label (Monitor.response_declassifiable: a fact of the manifest and
that label), which is where the D1 attack needs it, and it is a tenth of the caller's
remaining time (0.05 to 0.5 s), so that even a covered chain of MAX_DEPTH keeps 0.9 ** 8.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from app_files import write_app
from trapeze.runtime.invoker import MAX_DEPTH

CHAIN_MANIFEST = """\
[app]
name = "chain"

[labels]
bottom = ["public"]
public = ["top"]

[functions.hop]
handler = "functions/f.py:hop"
timeout = 1
"""

# A response declassifier that covers every callee at public: each level takes a margin.
COVERED = """
[declassifiers.ack]
channel = "response"
function = "constant_ack"
max_label = "top"
bound = "bottom"
"""

POLICY = """\
def constant_ack(value, info):
    return {"ack": True}
"""

CHAIN_CODE = """\
from trapeze.guest import functions


def hop(event, context):
    n = event["n"]
    left = context.get_remaining_time_in_millis()
    if n == 0:
        return [left]
    return [left] + functions.invoke("hop", {"n": n - 1})
"""


@pytest.mark.parametrize(("covered", "least_ms"), [(False, 800), (True, 300)],
                         ids=["no-declassifier", "covered-by-a-response-declassifier"])
def test_a_chain_of_max_depth_quick_invokes_with_1s_timeouts_still_works(
        tmp_path: Path, covered: bool, least_ms: int) -> None:
    """REGRESSION D1-margin. 9 invocations (depth 0..MAX_DEPTH) of a 1 s function that
    returns at once; the whole chain takes well under 0.1 s of work. Before 5d5b45e every
    level had ~1 s and the chain succeeded; with the first margin the deepest callee's
    deadline was already past when it started. Without a response declassifier no level
    takes a margin; with one, each keeps 90 % (0.9 ** 8 = 43 % of the second at the
    bottom, less the chain's own work)."""
    from trapeze import App

    manifest = CHAIN_MANIFEST + COVERED if covered else CHAIN_MANIFEST
    if covered:
        manifest = manifest.replace('name = "chain"\n', 'name = "chain"\npolicy = "policy.py"\n')
    app = write_app(tmp_path / "app", manifest, {"f.py": CHAIN_CODE}, POLICY, top=tmp_path)
    with App.load(app).start(store=f"sqlite:///{tmp_path / 'chain.db'}") as rt:
        r = rt.invoke("hop", {"n": MAX_DEPTH})
    assert r.status == "ok", (
        f"a {MAX_DEPTH}-deep chain of 1 s functions that do nothing failed: "
        f"{(r.error or '')[:300]}")
    budgets_ms = r.value
    assert len(budgets_ms) == MAX_DEPTH + 1
    # Each level ran for a few ms; the deepest callee still has most of what it may have.
    assert budgets_ms[-1] >= least_ms, f"remaining ms per level: {budgets_ms}"
    if covered:  # and the margin is taken there (the D1 protection is on in chains)
        assert budgets_ms[-1] < 700, f"remaining ms per level: {budgets_ms}"
