"""The API that function handlers import; the only platform code inside the sandbox.

Nothing here is trusted: the function can rewrite any of it, and the monitor treats every
message as attacker input.

    from trapeze.guest import kv, functions, http, streams, label, channels, workflows
"""

from __future__ import annotations

from trapeze.guest import channels, functions, http, kv, label, streams, tasks, workflows
from trapeze.guest.context import Context
from trapeze.guest.errors import (
    AlreadyExists,
    ChannelError,
    FlowError,
    InvalidArgument,
    InvocationError,
    LimitExceeded,
    NotFound,
    ProtocolError,
    TrapezeError,
)

__all__ = [
    "AlreadyExists",
    "ChannelError",
    "Context",
    "FlowError",
    "InvalidArgument",
    "InvocationError",
    "LimitExceeded",
    "NotFound",
    "ProtocolError",
    "TrapezeError",
    "channels",
    "functions",
    "http",
    "kv",
    "label",
    "streams",
    "tasks",
    "workflows",
]
