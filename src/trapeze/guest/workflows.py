"""Starting workflows."""

from __future__ import annotations

from typing import Any

from trapeze.guest._runtime import call


def start(workflow: str, name: str | None = None, input: Any = None,
          label: str | None = None) -> Any:
    """Start an execution of `workflow` (named `name`, unique per workflow) at the current
    label or a higher one; returns its description. A duplicate name raises an error."""
    return call(
        "workflows.start", {"workflow": workflow, "name": name, "input": input, "label": label}
    )


def complete_task(token: str, output: Any = None, error: str | None = None) -> Any:
    """Complete a callback task (the token a waitForTaskToken step handed out)."""
    return call("tasks.complete", {"token": token, "output": output, "error": error})
