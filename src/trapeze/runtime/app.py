"""`App` and `Runtime`: load a manifest, start the pieces, and run invocations.

This is the embedding API (DESIGN §9) the CLI, the tests and the benchmarks use:

    app = App.load("examples/hello_retail")
    with app.start(store="sqlite:///tmp/app.db", http=True) as rt:
        token = rt.add_principal("alice", label="client:alice")
        r = rt.invoke("products", event, as_principal="alice")

`ifc=False` starts the benchmark baseline instead: the same functions in warm unconfined
workers, a plain store, and the app's labels under an order where everything flows to
everything, so every check passes (labels are still accepted, so the same code runs).

`executor="ray"` runs the invocations on the nodes of a Ray cluster instead of in this
process's sandboxes (runtime/executors/ray.py, docs/scaling.md); this process keeps the
gateway, the principals and the stream and workflow engines, and every piece of state lives
in the PostgreSQL store.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from trapeze.errors import ConfigError
from trapeze.gateway.auth import Authenticator, JwtSettings
from trapeze.labels import Lattice
from trapeze.monitor import Declassifier, Invocation, Monitor
from trapeze.monitor.audit import audit_row, for_viewer, log_row
from trapeze.monitor.channels import HttpEgress, SmtpEmail
from trapeze.policy import Manifest, load_manifest, load_policy_module
from trapeze.runtime.audit import StoreAudit
from trapeze.runtime.invoker import FunctionLimits, InvocationResult, Invoker, Runner
from trapeze.runtime.streams import invoker_adapter
from trapeze.runtime.workflows import Engines
from trapeze.sandbox.wire import ProtocolError, check_value
from trapeze.store import StoreView, open_plain_store, open_store

log = logging.getLogger("trapeze.runtime")



class _NoChecks:
    """The baseline's label order: the app's labels, every check passes (IFC off)."""

    def __init__(self, lattice: Lattice) -> None:
        self._lattice = lattice
        self.bottom = lattice.bottom
        self.top = lattice.top
        self.check = lattice.check
        self.is_label = lattice.is_label

    def flows(self, a: str, b: str) -> bool:
        return True

    def join(self, a: str, b: str) -> str:
        return b

    def meet(self, a: str, b: str) -> str:
        return a

    def join_all(self, labels: Any) -> str:
        return self.top


class App:
    """A validated application: its manifest and where it lives."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest

    @classmethod
    def load(cls, path: str | Path) -> App:
        return cls(load_manifest(path))

    @property
    def name(self) -> str:
        return self.manifest.name

    def default_store_url(self, *, ifc: bool = True) -> str:
        name = "app.db" if ifc else "baseline.db"
        return f"sqlite:///{self.manifest.data_dir / name}"

    def start(
        self,
        store: str | None = None,
        *,
        http: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
        confine: bool = True,
        ifc: bool = True,
        jwt: JwtSettings | None = None,
        executor: str = "local",
        ray_address: str | None = None,
        allow_dev_tokens: bool = False,
    ) -> Runtime:
        """Start the app. `executor`: "local" (sandboxes in this process) or "ray" (sandboxes
        on every node of the Ray cluster at `ray_address`, default "auto"; needs a
        postgresql:// store). The manifest's plaintext principal tokens are development
        credentials: serving them on an address other than loopback needs
        `allow_dev_tokens`."""
        dev = sorted(p.name for p in self.manifest.principals.values() if p.token)
        if http and dev and not allow_dev_tokens and not _is_loopback(host):
            raise ConfigError(
                f"{self.manifest.path}: principals {', '.join(dev)} have plaintext tokens "
                f"in the manifest (development credentials: anyone who reads trapeze.toml can "
                f"act as them), and the gateway would listen on {host}, beyond this machine. "
                "Remove their `token` keys and register principals with 'trapeze principal "
                "add', or serve on 127.0.0.1, or pass --allow-dev-tokens"
            )
        if http and dev:
            log.warning("development tokens from the manifest are accepted for: %s",
                        ", ".join(dev))
        rt = Runtime(self, store or self.default_store_url(ifc=ifc), confine=confine, ifc=ifc,
                     jwt=jwt, executor=executor, ray_address=ray_address)
        try:
            rt.start(http=http, host=host, port=port)
        except BaseException:
            rt.close()
            raise
        return rt


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _LogSink:
    def __init__(self, record: Callable[[str, str, str, str], Any]) -> None:
        self._record = record

    def record_log(self, inv: Invocation, text: str) -> None:
        if text:
            # Kept at the invocation's final label: everything printed before a raise is
            # at most as secret as that. A NUL (PostgreSQL refuses it in text) becomes
            # U+FFFD, so that what a function prints never breaks the bookkeeping.
            self._record(inv.function, inv.request_id, inv.label,
                         text.replace("\x00", "\ufffd"))


class Runtime:
    def __init__(self, app: App, store_url: str, *, confine: bool, ifc: bool,
                 jwt: JwtSettings | None, executor: str = "local",
                 ray_address: str | None = None) -> None:
        from trapeze.runtime.executors import check_executor

        check_executor(executor, store_url, ifc=ifc)
        self.executor = executor
        self.ray_address = ray_address
        self._ray: Any = None  # the RayExecutor, when executor == "ray"
        self.app = app
        self.manifest = app.manifest
        self.ifc = ifc
        self.confine = confine
        self.store_url = store_url
        self.lattice: Lattice = (
            self.manifest.lattice if ifc else _NoChecks(self.manifest.lattice)  # type: ignore[assignment]
        )
        self._jwt = jwt
        self._runners: dict[str, Any] = {}
        self._server: Any = None
        self._server_thread: threading.Thread | None = None
        self.url: str | None = None
        self.store: Any = None
        self.invoker: Invoker | None = None
        self.engines: Engines | None = None
        self._closed = False

    # ------------------------------------------------------------------ start / stop
    def start(self, *, http: bool, host: str, port: int) -> None:
        m = self.manifest
        self._start_core()
        assert self.invoker is not None
        self.engines = Engines(self.store_url, self.lattice, m,
                               invoker_adapter(self.invoker, self.lattice)).start()
        self.invoker.engines = self.engines
        self._register_dev_principals()
        self.authenticator = Authenticator(
            self.lattice, self._resolve_token, jwt_settings=self._jwt,
            clearance_of=lambda p: getattr(self.system.get_principal(p), "clearance", None),
        )
        if http:
            self._serve(host, port)

    def _start_core(self) -> None:
        """The store, the monitor and the invoker: what runs invocations. A Ray node's
        headless runtime (executors/ray_node.py) starts only this, with the local executor."""
        m = self.manifest
        _ensure_parent(self.store_url)
        if self.ifc:
            self.store = open_store(self.store_url, self.lattice)
            self.system = self.store.system
        else:
            self.store = open_plain_store(self.store_url)
            self.system = self.store.system
        audit = StoreAudit(self.system, self.lattice.bottom)
        self.monitor = Monitor(
            self.lattice, self.store, audit,
            channels=self._channels(), declassifiers=self._declassifiers(),
        )
        limits = {
            name: FunctionLimits(spec.timeout, spec.concurrency, spec.retries)
            for name, spec in m.functions.items()
        }
        sink = _LogSink(self.system.append_log)
        if self.executor == "ray":
            # No sandbox here: every invocation runs on a node, where that node's own monitor
            # handles the guest's calls (so channels and declassifiers act there too).
            from trapeze.runtime.executors.ray import RayExecutor

            self._ray = RayExecutor(self, self.ray_address)
            self.invoker = self._ray.start(limits, sink)
        else:
            for name, spec in m.functions.items():
                self._runners[name] = self._runner(spec)
            for runner in self._runners.values():
                runner.start()
            self.invoker = self._local_invoker(limits, sink)
        self.monitor.dispatcher = self.invoker

    def _local_invoker(self, limits: dict[str, FunctionLimits], sink: _LogSink) -> Invoker:
        m = self.manifest
        return Invoker(self.monitor, self._runners, limits, sink,
                       concurrency=m.limits.concurrency, queue=m.limits.queue)

    def _runner(self, spec: Any) -> Runner:
        from trapeze.sandbox import Sandbox, SandboxSpec

        sandbox_spec = SandboxSpec(
            function=spec.name,
            app_dir=self.manifest.root,
            handler=f"{spec.module_name}:{spec.callable}",
            timeout_s=spec.timeout,
            memory_mb=spec.memory_mb,
            executables=tuple(spec.executables),
            env=dict(spec.env),
            preload=tuple(spec.preload),
            prefork=spec.prefork,
            private_dirs=self._private_dirs(),
        )
        if not self.ifc:
            from trapeze.sandbox.baseline import WarmPool

            # Enough warm workers to use every core, never more than the function's
            # concurrency: spawning one per request in flight would measure cold starts.
            size = min(spec.concurrency, 2 * (os.cpu_count() or 1))
            return WarmPool(sandbox_spec, size)  # type: ignore[return-value]
        return Sandbox(sandbox_spec, unconfined_dev=not self.confine)  # type: ignore[return-value]

    def _private_dirs(self) -> tuple[str, ...]:
        """The monitor's directories that no function may see into (the sandbox covers them):
        the app's data_dir and, for a SQLite store, the directory of its file."""
        dirs = [str(Path(self.manifest.data_dir).resolve())]
        sqlite_file = _sqlite_path(self.store_url)
        if sqlite_file is not None:
            dirs.append(str(sqlite_file.parent.resolve()))
        return tuple(dirs)

    def _channels(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, spec in self.manifest.channels.items():
            channel = HttpEgress(spec) if spec.kind == "http" else SmtpEmail(spec)
            out[name] = channel
        return out

    def _declassifiers(self) -> dict[str, Declassifier]:
        m = self.manifest
        if not self.ifc or not m.declassifiers:
            return {}
        functions = load_policy_module(m)
        return {
            name: Declassifier(name, d.channel, d.max_label, d.bound, functions[name])
            for name, d in m.declassifiers.items()
        }

    def _register_dev_principals(self) -> None:
        for p in self.manifest.principals.values():
            label = p.label
            existing = self.system.get_principal(p.name)
            if existing is None or existing.clearance != label:
                self.system.add_principal(p.name, label, replace=True)
        self._dev_tokens = {
            p.token: p.name for p in self.manifest.principals.values() if p.token
        }

    def _resolve_token(self, token: str) -> tuple[str, str | None, str | None]:
        """(status, principal, clearance) for a bearer token."""
        dev = self._dev_tokens.get(token)
        if dev is not None:
            principal = self.system.get_principal(dev)
            return ("ok", dev, principal.clearance if principal else None)
        status, principal = self.system.resolve_token(token)
        if principal is None:
            return (status, None, None)
        return ("ok", principal.id, principal.clearance)

    def _serve(self, host: str, port: int) -> None:
        import socket

        import uvicorn

        from trapeze.gateway.http import GatewayRoute, build_app, connection_limit

        routes = [
            GatewayRoute(r.path, r.methods, r.function, r.anonymous, r.max_body_bytes)
            for r in self.manifest.routes
        ]
        m = self.manifest
        asgi = build_app(self, routes, concurrency=m.limits.concurrency, queue=m.limits.queue,
                         new_request_id=lambda: uuid.uuid4().hex)
        # proto=IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on connections
        # whose socket says TCP, and without it every response on a kept-alive connection
        # waited ~40 ms (Nagle holding the body until the client's delayed ACK of the headers).
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                             socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        bound_port = sock.getsockname()[1]
        config = uvicorn.Config(asgi, log_level="warning", lifespan="off",
                                timeout_graceful_shutdown=30, backlog=4096,
                                limit_concurrency=connection_limit(m.limits.concurrency,
                                                                   m.limits.queue))
        self._server = uvicorn.Server(config)
        self._server_thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="trapeze-http",
            daemon=True,
        )
        self._server_thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._server_thread.is_alive():
                raise ConfigError(f"the HTTP gateway did not start on {host}:{port}")
            time.sleep(0.01)
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{bound_port}"

    def close(self, *, drain_timeout: float = 30.0) -> None:
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            self._server.should_exit = True
            if self._server_thread is not None:
                self._server_thread.join(timeout=drain_timeout)
        if self.engines is not None:
            # Before the invoker drains: an engine step invoked during the drain would be
            # refused ("shutting down"). Stopped, the engines leave every batch and
            # execution where it was last recorded, for the next start; their tables stay
            # open for the invocations still draining (stream puts, workflow starts).
            self.engines.stop()
        if self.invoker is not None:
            if not self.invoker.drain(drain_timeout):
                log.warning("shutdown: invocations still running after %.0fs", drain_timeout)
            self.invoker.close()
        if self.engines is not None:
            # Before the store closes: engine threads may still be inside SQLite.
            self.engines.close()
        if self._ray is not None:
            # After the engines (they invoke through it), before the store.
            self._ray.close(drain_timeout)
        for runner in self._runners.values():
            try:
                runner.close()
            except Exception:
                log.exception("closing a sandbox failed")
        for channel in getattr(getattr(self, "monitor", None), "channels", {}).values():
            channel.close()
        if self.store is not None:
            self.store.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the API
    def add_principal(self, principal: str, *, label: str, expires: float | None = None) -> str:
        """Register a principal with a clearance; returns a new API token (shown once).

        For a principal that exists, `label` must be its clearance: a token for it carries
        the stored clearance, never silently another one."""
        existing = self.system.get_principal(principal)
        if existing is None:
            self.system.add_principal(principal, label)
        elif existing.clearance != label:
            raise ConfigError(
                f"principal {principal!r} already exists with clearance "
                f"{existing.clearance!r}, not {label!r}; remove it first ('trapeze "
                f"principal remove <app> {principal}') to give it another clearance"
            )
        return self.system.create_token(principal, expires=expires)

    def clearance(self, principal: str) -> str:
        p = self.system.get_principal(principal)
        if p is None:
            raise ConfigError(f"no principal named {principal!r}")
        return p.clearance

    def _label_for(self, as_principal: str | None, as_label: str | None) -> tuple[str, str | None]:
        if as_principal is not None:
            clearance = self.clearance(as_principal)
            if as_label is None:
                return clearance, as_principal
            if not self.lattice.flows(as_label, clearance):
                raise ConfigError(f"{as_label!r} is above the clearance of {as_principal!r}")
            return as_label, as_principal
        return self.lattice.check(as_label or self.lattice.bottom), None

    def invoke(
        self,
        function: str,
        event: Any = None,
        *,
        as_principal: str | None = None,
        as_label: str | None = None,
        label: str | None = None,
        principal: str | None = None,
        request_id: str | None = None,
    ) -> InvocationResult:
        """Invoke `function` synchronously, as a principal or at a label (default: bottom)."""
        assert self.invoker is not None, "the runtime is not started"
        if label is None:
            label, principal = self._label_for(as_principal, as_label)
        try:
            check_value(event, "the event")
        except ProtocolError as exc:
            return InvocationResult(
                "refused", request_id=request_id or "",
                error=f"{exc}: an event must be JSON-compatible (None, bool, int, float, str, "
                      "list, dict with str keys) or bytes",
            )
        return self.invoker.invoke(function, event, label=label, principal=principal,
                                   request_id=request_id)

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Wait until no invocation runs, every stream record is delivered and no workflow
        execution is running (two quiet polls in a row); False on timeout."""
        assert self.invoker is not None and self.engines is not None
        deadline = time.monotonic() + timeout
        quiet = 0
        while time.monotonic() < deadline:
            idle = (not self.invoker.busy() and self.engines.streams.idle()
                    and not self.engines.workflows.db.executions(status="RUNNING"))
            quiet = quiet + 1 if idle else 0
            if quiet >= 2:
                return True
            time.sleep(0.02)
        return False

    def view(self, label: str) -> StoreView:
        return self.store.view(label)

    def _visible(self, viewer: str) -> Callable[[str | None], bool]:
        lat = self.lattice
        return lambda label: label is None or lat.flows(label, viewer)

    # A viewer never gets a row's store-wide seq: the gap between two seqs would count the
    # rows written in between at labels above it. Rows carry a cursor instead, their number
    # among the rows of the same query the viewer sees (monitor/audit.py explains why).
    def logs_visible_to(self, label: str, function: str | None = None, *,
                        limit: int = 1000, after: int | None = None) -> list[dict[str, Any]]:
        """The newest `limit` log records visible at `label` (of `function`, if given), or
        with `after` the first `limit` whose cursor is above it; oldest first."""
        visible = self._visible(label)
        rows = all_pages(lambda since: self.system.logs(visible=visible, function=function,
                                                        since_seq=since))
        return [log_row(n, r) for n, r in for_viewer(rows, after=after, limit=limit)]

    def audit_visible_to(self, label: str, *, limit: int = 1000,
                         after: int | None = None) -> list[dict[str, Any]]:
        """The newest `limit` audit entries visible at `label`, or with `after` the first
        `limit` whose cursor is above it; oldest first."""
        visible = self._visible(label)
        rows = (r for r in all_pages(lambda since: self.system.audit(since_seq=since))
                if visible(r.label))
        return [audit_row(n, r) for n, r in for_viewer(rows, after=after, limit=limit)]

    def logs(self, *, as_principal: str | None = None, as_label: str | None = None,
             function: str | None = None, after: int | None = None) -> list[dict[str, Any]]:
        label, _ = self._label_for(as_principal, as_label or (None if as_principal else
                                                              self.lattice.top))
        return self.logs_visible_to(label, function, after=after)

    def audit(self, *, as_principal: str | None = None, as_label: str | None = None,
              after: int | None = None) -> list[dict[str, Any]]:
        label, _ = self._label_for(as_principal, as_label or (None if as_principal else
                                                              self.lattice.top))
        return self.audit_visible_to(label, after=after)


def all_pages(fetch: Callable[[int], list[Any]]) -> Iterator[Any]:
    """Every record of a `since_seq`-paged system table, in seq order (lazily, page by
    page). Trusted side: the seqs it pages by are never shown to a viewer."""
    since = 0
    while True:
        page = fetch(since)
        if not page:
            return
        yield from page
        since = page[-1].seq


def newest(fetch: Callable[[int], list[Any]], limit: int,
           page_end: Callable[[int], list[Any]] | None = None) -> list[Any]:
    """The last `limit` records of a paged table. `fetch(since)` may filter records out;
    `page_end(since)` is then the unfiltered page, which decides where the next page starts
    (the system tables page by seq, at most 1000 rows at a time)."""
    out: deque[Any] = deque(maxlen=limit)
    since = 0
    while True:
        raw = (page_end or fetch)(since)
        if not raw:
            return list(out)
        out.extend(fetch(since) if page_end else raw)
        since = raw[-1].seq


def _sqlite_path(url: str) -> Path | None:
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):].split("?", 1)[0])
    return None


def _ensure_parent(url: str) -> None:
    path = _sqlite_path(url)
    if path is not None:
        # Only the monitor's uid may enter a store directory it creates (functions run as
        # other uids when the monitor is root; the sandbox also covers it, see _private_dirs).
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
