"""Helpers for the manifest tests: write small apps into temporary dirs, inspect problems."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path

from trapeze.policy import Problem, validate_manifest

HANDLER = "def handler(event, context):\n    return event\n"
POLICY = "def release(value, info):\n    return value\n"

# A partial order that is not a lattice: a and b have two minimal upper bounds, c and d.
NOT_A_LATTICE = """
[app]
name = "diamond"
[labels]
bottom = ["a", "b"]
a = ["c", "d"]
b = ["c", "d"]
c = ["top"]
d = ["top"]
[functions.f]
handler = "functions/a.py:handler"
"""

WORKFLOW = """
[workflows.w]
definition = "w.json"
"""


def write_app(root: Path, toml: str, files: Mapping[str, str] | None = None) -> Path:
    """An app dir with ``trapeze.toml`` and, by default, functions/a.py and policy.py."""
    root.mkdir(parents=True, exist_ok=True)
    all_files = {"functions/a.py": HANDLER, "functions/b.py": HANDLER, "policy.py": POLICY}
    all_files.update(files or {})
    for rel, text in all_files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "trapeze.toml").write_text(textwrap.dedent(toml).lstrip("\n"))
    return root


def line_of(root: Path, needle: str, nth: int = 1) -> int:
    """1-based line of the nth line of the app's manifest containing ``needle``."""
    seen = 0
    for i, line in enumerate((root / "trapeze.toml").read_text().splitlines(), start=1):
        if needle in line:
            seen += 1
            if seen == nth:
                return i
    raise AssertionError(f"{needle!r} not in the manifest")


def problems(root: Path) -> list[Problem]:
    manifest, errors, _ = validate_manifest(root)
    assert manifest is None or not errors
    return errors


def find(errors: list[Problem], line: int, *words: str) -> Problem:
    """The problem at ``line`` whose message holds every word; fails with all problems shown."""
    for p in errors:
        if p.line == line and all(w in p.message for w in words):
            return p
    shown = "\n".join(str(p) for p in errors) or "(no problems)"
    raise AssertionError(f"no problem at line {line} with {words}; got:\n{shown}")
