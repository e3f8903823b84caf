"""Confinement of function code (TCB): zygotes, confined children, the wire protocol.

    from trapeze.sandbox import Sandbox, SandboxSpec, Outcome, ConfinementUnavailable

See docs/security-model.md for what each mechanism stops and why.
"""

from __future__ import annotations

from trapeze.sandbox.sandbox import Sandbox
from trapeze.sandbox.spec import ConfinementUnavailable, Outcome, SandboxSpec

__all__ = ["ConfinementUnavailable", "Outcome", "Sandbox", "SandboxSpec"]
