"""Confinement of function code (TCB): zygotes, confined children, the wire protocol.

    from trapeze.sandbox import Sandbox, SandboxSpec, Outcome, ConfinementUnavailable

See docs/security-model.md for what each mechanism stops and why.

The names are loaded on first use (PEP 562): the zygote imports `trapeze.sandbox.zygote`,
which runs this file first, and must not carry the monitor's side (subprocess, logging,
uuid ...) into every fork — a smaller zygote is a cheaper fork.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trapeze.sandbox.sandbox import Sandbox
    from trapeze.sandbox.spec import ConfinementUnavailable, Outcome, SandboxSpec

__all__ = ["ConfinementUnavailable", "Outcome", "Sandbox", "SandboxSpec"]


def __getattr__(name: str) -> Any:
    if name == "Sandbox":
        from trapeze.sandbox.sandbox import Sandbox

        return Sandbox
    if name in ("ConfinementUnavailable", "Outcome", "SandboxSpec"):
        from trapeze.sandbox import spec

        return getattr(spec, name)
    raise AttributeError(f"module 'trapeze.sandbox' has no attribute {name!r}")
