"""Review: `[limits] workflow_executions`, the cap on workflow executions running at once per
label (each holds a thread in the workflow engine)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from policy_helpers import find, line_of, problems

from trapeze.policy import load_manifest

App = Callable[..., Path]

MANIFEST = """
[app]
name = "limits"

[labels]
bottom = ["public"]
public = ["top"]

[functions.a]
handler = "functions/a.py:handler"
"""


def test_workflow_executions_default_and_setting(app: App) -> None:
    assert load_manifest(app(MANIFEST)).limits.workflow_executions == 1000
    m = load_manifest(app(MANIFEST + "\n[limits]\nworkflow_executions = 25\n"))
    assert (m.limits.workflow_executions, m.limits.concurrency) == (25, 64)


def test_workflow_executions_out_of_range(app: App) -> None:
    root = app(MANIFEST + "\n[limits]\nworkflow_executions = 0\n")
    p = find(problems(root), line_of(root, "workflow_executions = 0"),
             "'workflow_executions' = 0", "[limits]")
    assert "write workflow_executions = 1 instead" in p.message
