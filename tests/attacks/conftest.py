"""Fixtures live in attack_helpers.py (a unique module name: both suites share sys.path)."""

from attack_helpers import monitor, sandbox  # noqa: F401
