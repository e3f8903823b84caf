"""The validated manifest: typed, frozen records the rest of the platform reads.

Everything here has already been checked by :mod:`trapeze.policy.manifest`; consumers may rely
on labels being valid in :attr:`Manifest.lattice`, handler files existing, cross references
(routes → functions, declassifiers → channels) resolving, and numbers lying in range.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from trapeze.errors import ConfigError
from trapeze.labels import Lattice

RESPONSE_CHANNEL = "response"
"""The channel name a declassifier uses for the reply to the invoker (not declarable)."""

_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Problem:
    """One error or warning, located in a file (usually ``trapeze.toml``)."""

    file: Path
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class ManifestError(ConfigError):
    """The manifest is invalid; :attr:`problems` holds every error found, in file order."""

    def __init__(self, problems: list[Problem], warnings: list[Problem] | None = None) -> None:
        self.problems = list(problems)
        self.warnings = list(warnings or [])
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class PrincipalSpec:
    name: str
    label: str  # clearance
    token: str | None = None
    dev_only: bool = False  # true when a plaintext token is declared in the manifest


@dataclass(frozen=True)
class ChannelSpec:
    name: str
    kind: Literal["smtp", "http"]
    bound: str
    host: str | None = None  # smtp
    port: int | None = None  # smtp
    sender: str | None = None  # smtp
    url_prefixes: tuple[str, ...] = ()  # http, normalised to end the authority with "/"
    timeout: float = 10.0
    max_response_bytes: int = 10 * 1024 * 1024

    def allows_url(self, url: str) -> bool:
        """Whether ``url`` lies under one of this channel's prefixes.

        Compared component-wise (scheme, host, port, path prefix) rather than as raw strings,
        so that ``http://a.test:80/`` matches ``http://a.test/`` and
        ``http://a.test.evil/`` or ``http://a.test@evil/`` never match ``http://a.test/``.
        """
        target = _url_parts(url)
        if target is None:
            return False
        for prefix in self.url_prefixes:
            want = _url_parts(prefix)
            if want is None:
                continue
            if target[:3] == want[:3] and target[3].startswith(want[3]):
                return True
        return False


def _url_parts(url: str) -> tuple[str, str, int, str] | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or parts.username or parts.password:
        return None
    # A server resolves dot segments, so "/api/../admin" must not pass for "/api/".
    if any(seg in (".", "..") for seg in unquote(parts.path).split("/")):
        return None
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme], parts.path or "/"


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    handler: str  # as written in the manifest
    module_file: Path  # absolute path of the handler's file (authoritative)
    module_name: str  # dotted name derived from the path, for messages and sys.modules
    callable: str
    timeout: float = 10.0
    memory_mb: int = 256
    executables: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict, hash=False)
    preload: tuple[str, ...] = ()
    concurrency: int = 16
    retries: int = 2
    prefork: int = 1


@dataclass(frozen=True)
class RouteSpec:
    path: str
    methods: tuple[str, ...]
    function: str
    anonymous: bool = False
    max_body_bytes: int = 1024 * 1024


@dataclass(frozen=True)
class DeclassifierSpec:
    name: str
    channel: str  # a declared channel, or RESPONSE_CHANNEL
    function: str  # callable in the policy module
    max_label: str
    bound: str


@dataclass(frozen=True)
class StreamSpec:
    name: str
    consumers: tuple[str, ...] = ()
    batch_size: int = 10
    max_attempts: int = 5
    max_record_bytes: int = 256 * 1024


@dataclass(frozen=True)
class WorkflowSpec:
    name: str
    definition: Path  # absolute path of the ASL file
    start_from: tuple[str, ...] = ()
    # The parsed ASL document (a mapping with StartAt and States), deeper checks come later.
    document: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class LimitsSpec:
    concurrency: int = 64
    queue: int = 256
    # Workflow executions running at once per label (each holds a thread in the engine).
    workflow_executions: int = 1000


@dataclass(frozen=True)
class Manifest:
    root: Path  # the app directory, absolute
    path: Path  # the trapeze.toml, absolute
    name: str
    lattice: Lattice
    principals: dict[str, PrincipalSpec]
    channels: dict[str, ChannelSpec]
    functions: dict[str, FunctionSpec]
    routes: list[RouteSpec]
    declassifiers: dict[str, DeclassifierSpec]
    streams: dict[str, StreamSpec]
    workflows: dict[str, WorkflowSpec]
    limits: LimitsSpec
    data_dir: Path
    policy_path: Path | None
    warnings: tuple[Problem, ...] = ()
