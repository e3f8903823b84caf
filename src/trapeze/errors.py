"""Errors shared by the trusted side and reported to guests.

A `GuestVisibleError` raised while the monitor handles a guest call is sent back to the guest,
which raises the exception class of the same `kind` from `trapeze.guest.errors`. Its message
must be built only from values the guest already knows or from static policy (labels, channel
names): it is an output to the guest.
"""

from __future__ import annotations


class TrapezeError(Exception):
    """Base class of the platform's errors."""


class ConfigError(TrapezeError):
    """A manifest or a setting is invalid; the message names the file, line and fix."""


class GuestVisibleError(TrapezeError):
    kind = "TrapezeError"


class FlowError(GuestVisibleError):
    """An output or label change the policy forbids (decided on static labels only)."""

    kind = "FlowError"


class InvalidArgument(GuestVisibleError):
    kind = "InvalidArgument"


class NotFound(GuestVisibleError):
    kind = "NotFound"


class LimitExceeded(GuestVisibleError):
    kind = "LimitExceeded"


class ChannelError(GuestVisibleError):
    """An allowed output failed in transit (connection refused, timeout, bad status)."""

    kind = "ChannelError"


class AlreadyExists(GuestVisibleError):
    """A name that must be unique (a workflow execution's) is already taken, visibly."""

    kind = "AlreadyExists"


class InvocationError(GuestVisibleError):
    """A synchronous invoke of another function did not return a value."""

    kind = "InvocationError"


GUEST_ERROR_KINDS = {
    cls.kind: cls
    for cls in (
        GuestVisibleError,
        FlowError,
        InvalidArgument,
        NotFound,
        LimitExceeded,
        ChannelError,
        InvocationError,
        AlreadyExists,
    )
}
