"""Fixtures live in sandbox_helpers.py (a unique module name: both suites share sys.path)."""

from sandbox_helpers import sandbox  # noqa: F401
