"""Exceptions a guest call can raise, mirrored by `kind` from the monitor's errors.

These are separate classes from trapeze.errors on purpose: nothing in trapeze.guest is
trusted, and the guest package must not depend on the trusted side's modules.
"""

from __future__ import annotations


class TrapezeError(Exception):
    """A guest API call failed; `kind` names the monitor's error class."""

    kind = "TrapezeError"


class FlowError(TrapezeError):
    """The policy forbids this output or label change."""

    kind = "FlowError"


class InvalidArgument(TrapezeError):
    kind = "InvalidArgument"


class NotFound(TrapezeError):
    kind = "NotFound"


class LimitExceeded(TrapezeError):
    kind = "LimitExceeded"


class ChannelError(TrapezeError):
    kind = "ChannelError"


class InvocationError(TrapezeError):
    kind = "InvocationError"


class AlreadyExists(TrapezeError):
    """A workflow execution of that name already exists (Step Functions' ExecutionAlreadyExists)."""

    kind = "AlreadyExists"


class ProtocolError(TrapezeError):
    """The guest runtime could not talk to the monitor (channel closed, bad frame)."""

    kind = "ProtocolError"


ERROR_CLASSES: dict[str, type[TrapezeError]] = {
    cls.kind: cls
    for cls in (
        TrapezeError,
        FlowError,
        InvalidArgument,
        NotFound,
        LimitExceeded,
        ChannelError,
        InvocationError,
        AlreadyExists,
    )
}


def from_kind(kind: str, message: str) -> TrapezeError:
    return ERROR_CLASSES.get(kind, TrapezeError)(message)
