"""The Ray executor, node side (trusted): the node agent and the gateway bridge.

Every node of the cluster runs one :class:`NodeAgent` actor (placed by the gateway with a
hard node affinity; Ray restarts it when its process dies). The agent runs a *headless node
runtime*: the app's zygotes and sandboxes under exactly the local executor's confinement, a
monitor on the shared PostgreSQL faceted store, the app's channels and declassifiers, and a
local Invoker — a :class:`~trapeze.runtime.app.Runtime` without HTTP, principals or engines.

What crosses Ray, and between whom. The gateway calls ``agent.invoke(function, event, label,
bound, principal, request_id)``; the agent answers with the node Invoker's
``InvocationResult`` (the fixed withheld reply at a raise included: the node replies early and
runs the body on, detached, exactly as locally). Both ends are trusted processes: the label,
the bound and the principal come from the gateway's authentication or from a monitor, never
from a guest, and no guest chooses the node. Confined children cannot reach Ray at all (no
socket, an empty network namespace, a private /tmp, Landlock;
tests/ray_executor/test_ray_attacks.py).

Calls a guest makes that belong to the gateway — an asynchronous invoke, a stream put, a
workflow start, a callback completion — go back through one :class:`GatewayBridge` actor per
gateway (a mailbox the gateway drains; a Ray driver cannot serve actor calls itself), with the
parent's label and identity taken from the node monitor's own ``Invocation`` record.
Synchronous invokes run on the node itself (see ``NodeInvoker``).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import os
import time
from pathlib import Path
from typing import Any

from trapeze.errors import GUEST_ERROR_KINDS, GuestVisibleError, TrapezeError
from trapeze.monitor import Invocation
from trapeze.policy import Manifest
from trapeze.runtime.app import App, Runtime
from trapeze.runtime.invoker import FunctionLimits, InvocationResult, Invoker

log = logging.getLogger("trapeze.ray")

# Ops a node sends back to its gateway (served by RayExecutor._serve_bridge).
BRIDGE_OPS = ("invoke_async", "stream_put", "workflow_start", "task_complete")
# A guest call waiting for the gateway is bounded by its invocation's deadline plus this.
BRIDGE_GRACE_S = 5.0


def app_digest(root: Path) -> str:
    """A digest of the app's files, so that a node refuses to serve a different app (another
    version of a handler, another manifest) than the gateway's. Hidden folders (the data
    folder `.trapeze`, `.git`) and bytecode caches are left out."""
    h = hashlib.sha256()
    root = root.resolve()
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(p.startswith(".") or p == "__pycache__" for p in rel.parts):
            continue
        if path.is_file():
            h.update(rel.as_posix().encode() + b"\0")
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def parent_record(inv: Invocation) -> dict[str, Any]:
    """The part of a node's Invocation the gateway needs to act for it (no callbacks)."""
    return {"request_id": inv.request_id, "function": inv.function, "label": inv.label,
            "principal": inv.principal, "depth": inv.depth, "deadline": inv.deadline}


class GatewayBridge:
    """A mailbox between the nodes and one gateway (a Ray asyncio actor on the gateway's
    node). Nodes `call`; the gateway `take`s requests and `answer`s them."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[tuple[int, str, dict[str, Any]]] = asyncio.Queue()
        self._waiting: dict[int, asyncio.Future[tuple[Any, ...]]] = {}
        self._ids = itertools.count()

    async def call(self, op: str, payload: dict[str, Any]) -> tuple[Any, ...]:
        rid = next(self._ids)
        fut: asyncio.Future[tuple[Any, ...]] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        self._queue.put_nowait((rid, op, payload))
        try:
            return await fut
        finally:
            self._waiting.pop(rid, None)

    async def take(self, wait_s: float) -> list[tuple[int, str, dict[str, Any]]]:
        try:
            first = await asyncio.wait_for(self._queue.get(), wait_s)
        except TimeoutError:
            return []
        out = [first]
        while not self._queue.empty() and len(out) < 256:
            out.append(self._queue.get_nowait())
        return out

    async def answer(self, rid: int, reply: tuple[Any, ...]) -> None:
        fut = self._waiting.get(rid)
        if fut is not None and not fut.done():
            fut.set_result(reply)


class _BridgeClient:
    """The node's way to the gateway: one blocking Ray call per guest call, to the gateway's
    bridge actor, looked up by name (again after a failure: the gateway replaces a bridge
    that died, under the same name)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._bridge: Any = None

    def call(self, parent: Invocation, op: str, **args: Any) -> Any:
        import ray

        payload = {"parent": parent_record(parent), **args}
        timeout = max(parent.remaining_s(), 0.0) + BRIDGE_GRACE_S
        try:
            if self._bridge is None:
                self._bridge = ray.get_actor(self._name)
            reply = ray.get(self._bridge.call.remote(op, payload), timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            raise TrapezeError(f"the gateway did not answer {op} in time") from None
        except (ray.exceptions.RayError, ValueError) as e:
            # Not retried (the gateway may have acted on it already); the next call looks the
            # bridge up again. The guest gets the monitor's "internal error".
            self._bridge = None
            raise TrapezeError(f"the gateway is unreachable ({type(e).__name__})") from None
        kind = reply[0]
        if kind == "ok":
            return reply[1]
        if kind == "guest":
            # The gateway's GuestVisibleError, rebuilt by kind: the guest only ever sees the
            # kind and the message, both of which the gateway built for it.
            cls = GUEST_ERROR_KINDS.get(reply[1], GuestVisibleError)
            raise cls(reply[2])
        raise TrapezeError(f"the gateway failed to serve {op} ({reply[1]})")


class _BridgeEngines:
    """Streams and workflows live with the gateway: the node forwards its guests' calls."""

    def __init__(self, client: _BridgeClient) -> None:
        self._client = client

    def stream_put(self, parent: Invocation, stream: str, record: Any,
                   partition_key: str | None, label: str) -> Any:
        return self._client.call(parent, "stream_put", stream=stream, record=record,
                                 partition_key=partition_key, label=label)

    def workflow_start(self, parent: Invocation, workflow: str, name: str | None, event: Any,
                       label: str) -> Any:
        return self._client.call(parent, "workflow_start", workflow=workflow, name=name,
                                 event=event, label=label)

    def task_complete(self, parent: Invocation, token: str, output: Any, error: Any) -> Any:
        return self._client.call(parent, "task_complete", token=token, output=output,
                                 error=error)


class NodeInvoker(Invoker):
    """The node's Invoker. Synchronous invokes stay on this node: the callee runs at the
    caller's label and answers only to the caller, which is waiting here with its deadline
    running, so another Ray hop would add latency and a second way to fail without buying
    anything — the node has a zygote for every function. Asynchronous invokes go to the
    gateway, which spreads them over the nodes and retries them on another node when theirs
    is lost (nobody waits for them here, so they must not depend on this node surviving)."""

    bridge: _BridgeClient

    def invoke_async(self, parent: Invocation, function: str, event: Any, label: str) -> str:
        return str(self.bridge.call(parent, "invoke_async", function=function, event=event,
                                    label=label))


class NodeRuntime(Runtime):
    """A Runtime without HTTP, principals or engines: the local executor's core (store,
    monitor with the app's channels and declassifiers, sandboxes, invoker)."""

    def __init__(self, app: App, store_url: str, *, confine: bool, bridge: _BridgeClient):
        super().__init__(app, store_url, confine=confine, ifc=True, jwt=None)
        self._bridge = bridge

    def start_node(self) -> None:
        self._start_core()

    def _local_invoker(self, limits: dict[str, FunctionLimits], sink: Any) -> Invoker:
        m = self.manifest
        inv = NodeInvoker(self.monitor, self._runners, limits, sink,
                          concurrency=m.limits.concurrency, queue=m.limits.queue)
        inv.bridge = self._bridge
        inv.engines = _BridgeEngines(self._bridge)
        return inv


class NodeAgent:
    """One per node (a Ray actor). Everything it does is the local executor's: the same
    Runtime core, Sandboxes, Monitor and Invoker, on the shared PostgreSQL store."""

    def __init__(self, manifest: Manifest, digest: str, store_url: str, confine: bool,
                 bridge_name: str) -> None:
        import ray

        logging.basicConfig(level=logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
        # The gateway's manifest itself (an embedding program may have adjusted it in memory,
        # e.g. pointed a channel elsewhere), so that every node enforces exactly the policy
        # the gateway validated; the code it names is read from this node's disk and must be
        # the gateway's, file for file.
        app = App(manifest)
        mine = app_digest(manifest.root)
        if mine != digest:
            raise TrapezeError(
                f"the app at {manifest.root} on this node differs from the gateway's (digest "
                f"{mine[:12]} here, {digest[:12]} there): deploy the same app, at the same "
                "path, to every node"
            )
        ray.get_actor(bridge_name)  # fail now, not at the first guest call, if it is missing
        bridge = _BridgeClient(bridge_name)
        self.runtime = NodeRuntime(app, store_url, confine=confine, bridge=bridge)
        try:
            self.runtime.start_node()
        except BaseException:
            self.runtime.close(drain_timeout=1.0)
            raise
        self.started = time.time()

    def ready(self) -> dict[str, Any]:
        import ray

        return {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "functions": sorted(self.runtime.manifest.functions)}

    def invoke(self, function: str, event: Any, label: str, bound: str, principal: str | None,
               request_id: str) -> InvocationResult:
        rt = self.runtime
        assert rt.invoker is not None
        # Both labels come from the gateway (trusted); checked again because a label this
        # node's lattice does not know must fail here, not deep inside the monitor.
        label, bound = rt.lattice.check(label), rt.lattice.check(bound)
        return rt.invoker.invoke(function, event, label=label, response_bound=bound,
                                 principal=principal, request_id=request_id)

    def busy(self) -> bool:
        assert self.runtime.invoker is not None
        return self.runtime.invoker.busy()

    def executed(self) -> int:
        """How many invocations this agent ran (nested ones included): for tests and
        benchmarks that look at how the work was spread."""
        assert self.runtime.invoker is not None
        return self.runtime.invoker.executed

    def close(self, drain_timeout: float = 10.0) -> None:
        self.runtime.close(drain_timeout=drain_timeout)
