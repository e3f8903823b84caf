"""The sandbox's public data types: what to run, and what came of it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from trapeze.errors import TrapezeError

MiB = 1024 * 1024


class ConfinementUnavailable(TrapezeError):
    """A confinement mechanism is missing; the message names it and how to get it."""

    def __init__(self, mechanism: str, message: str) -> None:
        super().__init__(f"confinement unavailable: {mechanism}: {message}")
        self.mechanism = mechanism


@dataclass(frozen=True)
class SandboxSpec:
    function: str
    app_dir: Path
    handler: str
    timeout_s: float = 10.0
    memory_mb: int = 512
    cpu_s: int | None = None
    executables: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    preload: tuple[str, ...] = ()
    prefork: int = 2
    max_message_bytes: int = 16 * MiB
    # Optional additions (not in the original interface, defaults keep it unchanged):
    max_log_bytes: int = 256 * 1024
    tmp_mb: int = 64  # size of the private per-invocation tmpfs mounted at /tmp
    max_open_files: int = 256
    max_threads: int = 64  # RLIMIT_NPROC of the slot uid (threads count as tasks)
    # The monitor's own directories (the store's, the app's data_dir): the zygote covers each
    # that a child could otherwise read or stat with an empty tmpfs, or refuses to start
    # where that is impossible (confine.private_dir_covers).
    private_dirs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        module, sep, attr = self.handler.partition(":")
        if not sep or not module or not attr:
            raise ValueError(f"handler must be 'module.path:callable', got {self.handler!r}")
        for exe in self.executables:
            if not exe.startswith("/"):
                raise ValueError(f"executables must be absolute paths, got {exe!r}")
        if self.timeout_s <= 0 or self.memory_mb <= 0 or self.prefork < 0:
            raise ValueError("timeout_s and memory_mb must be positive, prefork >= 0")
        for k, v in self.env.items():
            if not isinstance(k, str) or not isinstance(v, str) or "=" in k or "\0" in k + v:
                raise ValueError(f"invalid environment variable {k!r}")
        # Freeze the mapping: the spec is shared between threads.
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))
        object.__setattr__(self, "app_dir", Path(self.app_dir).resolve())
        object.__setattr__(self, "executables", tuple(self.executables))
        object.__setattr__(self, "preload", tuple(self.preload))
        object.__setattr__(self, "private_dirs", tuple(str(d) for d in self.private_dirs))

    @property
    def module(self) -> str:
        return self.handler.partition(":")[0]

    @property
    def attribute(self) -> str:
        return self.handler.partition(":")[2]

    @property
    def cpu_limit_s(self) -> int:
        return self.cpu_s if self.cpu_s is not None else math.ceil(self.timeout_s) + 1

    def to_wire(self) -> dict[str, Any]:
        """What the zygote needs to know, as plain data (it is exec'd, not forked)."""
        return {
            "function": self.function,
            "app_dir": str(self.app_dir),
            "module": self.module,
            "attribute": self.attribute,
            "memory_mb": self.memory_mb,
            "cpu_s": self.cpu_limit_s,
            "executables": list(self.executables),
            "env": dict(self.env),
            "preload": list(self.preload),
            "max_message_bytes": self.max_message_bytes,
            "tmp_mb": self.tmp_mb,
            "max_open_files": self.max_open_files,
            "max_threads": self.max_threads,
            "private_dirs": list(self.private_dirs),
        }


@dataclass
class Outcome:
    status: str  # "ok" | "error" | "timeout" | "crash" | "protocol"
    value: Any = None
    error: str | None = None
    log: str = ""
    duration_s: float = 0.0
    # Host pid of the process that served the invocation (diagnostics and tests).
    pid: int | None = None
