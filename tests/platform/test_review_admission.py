"""Review: a detached continuation counts against its function's concurrency until it ends.

The attack (found in review): an anonymous route to a function that raises above the caller
and then works for its whole timeout. Its caller gets the withheld reply (HTTP 202) at the
raise, and admission used to be released with that reply, so a flood of such requests ran any
number of bodies at once — every one holding a pool thread and a confined child — whatever
the manifest's `concurrency` said, starving every other route. Admission is now held until
the body ends.
"""

from __future__ import annotations

import time
from pathlib import Path

from trapeze import App

MANIFEST = """\
[app]
name = "admission"

[labels]
bottom = ["public"]
public = ["top"]

[limits]
queue = 0

[functions.slow]
handler = "functions/slow.py:handler"
timeout = 10
concurrency = 1
"""

SLOW = """\
import time

from trapeze.guest import label


def handler(event, context):
    label.raise_to("top")  # the caller's reply is withheld from here on
    time.sleep(event["seconds"])
    return "done"
"""


def test_a_withheld_body_keeps_its_admission_until_it_ends(tmp_path: Path) -> None:
    app_dir = tmp_path / "app"
    (app_dir / "functions").mkdir(parents=True)
    (app_dir / "trapeze.toml").write_text(MANIFEST)
    (app_dir / "functions" / "slow.py").write_text(SLOW)
    for p in (app_dir, app_dir / "functions"):
        p.chmod(0o755)
    with App.load(app_dir).start(store=f"sqlite:///{tmp_path / 'app.db'}") as rt:
        first = rt.invoke("slow", {"seconds": 3})
        assert first.status == "withheld"
        # The first body still runs (concurrency 1, no queue): a second caller is refused.
        second = rt.invoke("slow", {"seconds": 0})
        assert second.status == "refused" and "busy" in (second.error or ""), second
        deadline = time.monotonic() + 20
        while rt.invoker is not None and rt.invoker.busy() and time.monotonic() < deadline:
            time.sleep(0.05)
        # Once it has ended, the slot is free again.
        assert rt.invoke("slow", {"seconds": 0}).status == "withheld"


NESTED = """\
[app]
name = "nested"

[labels]
bottom = ["public"]
public = ["top"]

[functions.front]
handler = "functions/nested.py:front"
timeout = 1
concurrency = 1

[functions.slow]
handler = "functions/nested.py:slow"
timeout = 60
"""

NESTED_CODE = """\
import time

from trapeze.guest import functions


def front(event, context):
    return functions.invoke("slow", {})


def slow(event, context):
    time.sleep(30)
    return "done"
"""


def test_a_synchronous_callee_never_outlives_its_callers_deadline(tmp_path: Path) -> None:
    """Review: the caller stopped waiting at its deadline but its callee ran on for its own
    timeout, counted by no admission: a flood of requests left any number of bodies (and
    confined children) running."""
    app_dir = tmp_path / "nested"
    (app_dir / "functions").mkdir(parents=True)
    (app_dir / "trapeze.toml").write_text(NESTED)
    (app_dir / "functions" / "nested.py").write_text(NESTED_CODE)
    for p in (app_dir, app_dir / "functions"):
        p.chmod(0o755)
    with App.load(app_dir).start(store=f"sqlite:///{tmp_path / 'nested.db'}") as rt:
        assert rt.invoke("front", {}).status == "timeout"
        deadline = time.monotonic() + 10  # the callee has 30 s of work of its own
        while rt.invoker is not None and rt.invoker.busy() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rt.invoker is not None and not rt.invoker.busy(), "the callee outlived its caller"
