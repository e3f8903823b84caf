"""The Ray executor, gateway side (trusted; DESIGN §9, docs/scaling.md).

The runtime that serves HTTP (and owns the principals and the stream and workflow engines)
runs no sandbox itself. It keeps one :class:`~trapeze.runtime.executors.ray_node.NodeAgent`
actor on every alive node of the Ray cluster and sends each top-level invocation — an HTTP
request, an API or CLI call, a stream batch, a workflow task, an asynchronous invoke — to the
ready agent with the fewest invocations in flight (ties in turn) as one actor call. Admission
(the overall and per-function limits and queues) stays here, so a request refused for load is
refused exactly as locally.

Losing a node. Ray fails the calls in flight on a node that died (or whose agent process
died); each becomes the reply ``status="error"``, ``error="Trapeze.NodeLost: ..."`` — with no
label, because nothing is known of how far the invocation got. What happens next is the
retry policy of whoever invoked:

* a synchronous top-level invocation is **not** retried: its effects up to the loss may have
  happened (committed writes are in PostgreSQL), so repeating it is the caller's decision, as
  for a synchronous Lambda invoke; the caller gets the error at once;
* an asynchronous invocation is retried as its function's ``retries`` says, each attempt on a
  node chosen afresh (the gateway's Invoker runs the attempts);
* a stream batch is retried by the stream engine (``max_attempts``) and a workflow task by
  the state's ``Retry`` (the error name is ``Trapeze.NodeLost``).

The node loss itself carries no secret: it is decided by the infrastructure, not by data, and
a reply that was already withheld stays withheld (the node sent it at the raise).

Agents are kept in step with the cluster by a watcher thread: a new node gets an agent, an
agent whose node died is dropped, an agent that failed while its node lives is replaced.
"""

from __future__ import annotations

import logging
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from trapeze.errors import ConfigError, GuestVisibleError
from trapeze.monitor import Invocation, Monitor
from trapeze.runtime.executors.ray_node import (
    BRIDGE_OPS,
    GatewayBridge,
    NodeAgent,
    app_digest,
)
from trapeze.runtime.invoker import FunctionLimits, InvocationResult, InvocationSink, Invoker

log = logging.getLogger("trapeze.ray")

NODE_LOST = "Trapeze.NodeLost"
NO_NODES = "Trapeze.NoNodes"
START_TIMEOUT_S = 180.0  # every agent starts a zygote per function; a loaded machine is slow
WATCH_INTERVAL_S = 1.0
RETRY_FAILED_AGENT_S = 30.0  # an agent that failed to start is tried again after this
# How long the gateway waits for a node beyond the function's timeout: the node may queue the
# invocation behind its own admission (up to 30 s) before running it.
ANSWER_GRACE_S = 60.0
RAY_HINT = ("install it with: pip install 'ray==2.60.0' (the test extras include it)")


def _find_gcs(address: str) -> str | None:
    """HOST:PORT of the cluster's GCS: `address` itself, or for "auto" the cluster this
    machine runs (RAY_ADDRESS, then the address `ray start` recorded); None if there is none."""
    if address != "auto":
        return address
    try:
        from ray._private.services import get_ray_address_from_environment

        found = get_ray_address_from_environment("auto", None)
    except ConnectionError:
        return None
    except Exception:  # a private helper of Ray: if it changed, let ray.init resolve "auto"
        return "auto"
    return str(found) if found else None


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(f"the Ray executor needs the ray package; {RAY_HINT}") from None
    return ray


class _NotHere:
    """The gateway's stand-in runner: invocations never run in the gateway's process."""

    def run(self, *args: Any) -> Any:
        raise RuntimeError("with the Ray executor, invocations run on the nodes")


@dataclass
class _Agent:
    node_id: str
    handle: Any
    ready_ref: Any
    created: float = field(default_factory=time.monotonic)
    ready: bool = False
    failed: bool = False  # its node lives but the agent does not (replaced by the watcher)
    inflight: int = 0
    pid: int | None = None  # the agent's process, once ready


class RayInvoker(Invoker):
    """The gateway's Invoker: admission, withheld replies and async retries as locally;
    `_execute` hands the invocation to a node instead of running a sandbox."""

    def __init__(self, monitor: Monitor, limits: Mapping[str, FunctionLimits],
                 sink: InvocationSink, executor: RayExecutor, *, concurrency: int,
                 queue: int) -> None:
        super().__init__(monitor, {name: _NotHere() for name in limits}, limits, sink,
                         concurrency=concurrency, queue=queue)
        self._executor = executor

    def _execute(self, inv: Invocation, event: Any) -> InvocationResult:
        self.executed += 1
        return self._executor.call(inv, event)

    def busy(self) -> bool:
        # Detached continuations (after a withheld reply) run on the nodes after the
        # gateway's call has returned: ask them too.
        return super().busy() or self._executor.nodes_busy()


class RayExecutor:
    def __init__(self, runtime: Any, address: str | None) -> None:
        self.runtime = runtime
        self.address = address or "auto"
        self._lock = threading.Lock()
        self._agents: dict[str, _Agent] = {}
        self._failed_at: dict[str, float] = {}  # node id -> when its agent last failed
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._owns_ray = False
        self._bridge: Any = None
        self._serve_pool: ThreadPoolExecutor | None = None
        self.invoker: RayInvoker | None = None

    # ------------------------------------------------------------------ start / stop
    def start(self, limits: Mapping[str, FunctionLimits], sink: InvocationSink) -> RayInvoker:
        ray = _ray()
        m = self.runtime.manifest
        self.limits = dict(limits)
        self._connect(ray)

        # Agents find the bridge by name (a handle among an actor's constructor arguments
        # would make Ray keep it in the object store for restarts, and warn about it).
        self._bridge_name = f"trapeze-bridge-{uuid.uuid4().hex[:16]}"
        self._make_bridge(ray)
        self._agent_cls = ray.remote(NodeAgent)
        self._digest = app_digest(m.root)
        # Enough threads per agent for everything the gateway may have in flight at once
        # (admitted invocations, async attempts, engine work); more wait in Ray's queue.
        self._agent_concurrency = min(m.limits.concurrency * 4 + 64, 1000)
        self.invoker = RayInvoker(self.runtime.monitor, limits, sink, self,
                                  concurrency=m.limits.concurrency, queue=m.limits.queue)
        self._serve_pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="trapeze-bridge")
        self._sync_agents(ray)
        self._await_first_agents(ray)
        for target, name in ((self._watch, "trapeze-ray-watch"),
                             (self._serve_bridge, "trapeze-ray-bridge")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self.invoker

    def _make_bridge(self, ray: Any) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # On the node this process is attached to, and only there (a soft affinity lets Ray
        # put it on any node, which may then leave): if that node goes, so does the gateway.
        here = ray.get_runtime_context().get_node_id()
        self._bridge = ray.remote(GatewayBridge).options(
            name=self._bridge_name, num_cpus=0, max_concurrency=4096,
            scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
        ).remote()

    def _connect(self, ray: Any) -> None:
        if ray.is_initialized():
            # Already connected (an embedding program, the tests): use that connection.
            return
        hint = ("Start one with 'ray start --head' (and 'ray start --address HEAD:PORT' on the "
                "other machines), then pass --ray-address HEAD:PORT or auto")
        if self.address.startswith("ray://"):
            raise ConfigError(
                "Ray Client addresses (ray://...) are not supported: the gateway must be a "
                "process of the cluster; pass the head's GCS address, HEAD:PORT (6379 by "
                "default), and run the gateway on a machine of the cluster"
            )
        gcs = _find_gcs(self.address)
        if gcs is None:
            raise ConfigError(f"no running Ray cluster found (--ray-address auto). {hint}")
        # ray.init retries an unreachable GCS for minutes: fail in seconds instead.
        try:
            if gcs != "auto":
                host, port = gcs.rsplit(":", 1)
                socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot reach the Ray cluster at {gcs}: {e}. {hint}") from None
        try:
            ray.init(address=gcs, logging_level=logging.WARNING, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ConfigError(f"cannot connect to the Ray cluster at {gcs}: {e}. {hint}") \
                from None
        self._owns_ray = True

    def _await_first_agents(self, ray: Any) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            self._check_ready(ray, wait_s=0.5)
            with self._lock:
                pending = [a for a in self._agents.values() if not a.ready and not a.failed]
                ready = [a for a in self._agents.values() if a.ready]
            if not pending:
                break
        if not ready:
            raise ConfigError(
                "no Ray node could start the app's sandboxes (see the errors logged above: "
                "each node needs the app at the same path and the confinement features of "
                "docs/security-model.md)"
            )
        log.info("ray executor: %d node(s) ready", len(ready))

    def close(self, drain_timeout: float = 30.0) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        ray = _ray()
        if not ray.is_initialized():
            return
        with self._lock:
            agents = list(self._agents.values())
            self._agents.clear()
        refs = [a.handle.close.remote(drain_timeout) for a in agents if a.ready]
        if refs:
            ray.wait(refs, num_returns=len(refs), timeout=drain_timeout + 5)
        for a in agents:
            ray.kill(a.handle, no_restart=True)
        if self._bridge is not None:
            ray.kill(self._bridge, no_restart=True)
        if self._serve_pool is not None:
            self._serve_pool.shutdown(wait=False, cancel_futures=True)
        if self._owns_ray:
            ray.shutdown()

    # ------------------------------------------------------------------ nodes and agents
    def _sync_agents(self, ray: Any) -> None:
        """One agent per alive node: create the missing, drop the dead, replace the failed."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
        now = time.monotonic()
        dropped: list[_Agent] = []
        with self._lock:
            for node_id, agent in list(self._agents.items()):
                if node_id not in alive or agent.failed:
                    dropped.append(self._agents.pop(node_id))
                    if node_id in alive and not agent.ready:
                        # It never started (no confinement there, another app version...):
                        # try again later, not every second. One that served is replaced now.
                        self._failed_at[node_id] = now
            for node_id in alive - set(self._agents):
                if now - self._failed_at.get(node_id, -1e9) < RETRY_FAILED_AGENT_S:
                    continue
                handle = self._agent_cls.options(
                    num_cpus=0,  # its CPU use is its sandboxes', outside Ray's accounting
                    max_concurrency=self._agent_concurrency,
                    max_restarts=-1,  # a crashed agent process comes back on its node
                    max_task_retries=0,  # retrying an invocation is our policy, not Ray's
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
                ).remote(self.runtime.manifest, self._digest, self.runtime.store_url,
                         self.runtime.confine, self._bridge_name)
                self._agents[node_id] = _Agent(node_id, handle, handle.ready.remote())
        for agent in dropped:
            log.warning("ray executor: dropping the agent of node %s (%s)", agent.node_id[:12],
                        "failed" if agent.failed else "node lost")
            try:
                ray.kill(agent.handle, no_restart=True)
            except Exception:  # already gone with its node
                pass

    def _check_ready(self, ray: Any, wait_s: float) -> None:
        with self._lock:
            pending = {a.ready_ref: a for a in self._agents.values()
                       if not a.ready and not a.failed}
        if not pending:
            time.sleep(wait_s)
            return
        done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=wait_s)
        for ref in done:
            agent = pending[ref]
            try:
                info = ray.get(ref)
            except Exception as e:
                log.error("ray executor: the agent on node %s failed to start: %s",
                          agent.node_id[:12], e)
                with self._lock:
                    agent.failed = True
                continue
            with self._lock:
                agent.ready = True
                agent.pid = int(info["pid"])
            log.info("ray executor: node %s ready (pid %s)", info["node_id"][:12], info["pid"])

    def _watch(self) -> None:
        ray = _ray()
        while not self._stop.wait(WATCH_INTERVAL_S):
            try:
                self._sync_agents(ray)
                self._check_ready(ray, wait_s=0.0)
            except Exception:  # a GCS hiccup must not end the watch
                log.exception("ray executor: watching the cluster failed; retrying")

    def nodes(self) -> list[str]:
        """The node ids whose agents are ready."""
        with self._lock:
            return [a.node_id for a in self._agents.values() if a.ready and not a.failed]

    def agent_pids(self) -> dict[str, int]:
        """node id -> the process id of its ready agent (tests kill one)."""
        with self._lock:
            return {a.node_id: a.pid for a in self._agents.values()
                    if a.ready and not a.failed and a.pid is not None}

    def _pick(self) -> _Agent | None:
        with self._lock:
            live = [a for a in self._agents.values() if a.ready and not a.failed]
            if not live:
                return None
            # Fewest in flight; among equals, one at random. Not in turn: a counter of picks
            # over invocations of every label made the node of the next public invocation
            # (its uid block, its hostname) tell how many invocations had run since the last
            # one, a number a high function sets with invoke_async (review, session 6).
            fewest = min(a.inflight for a in live)
            agent = secrets.choice([a for a in live if a.inflight == fewest])
            agent.inflight += 1
            return agent

    # ------------------------------------------------------------------ invocations
    def call(self, inv: Invocation, event: Any) -> InvocationResult:
        """Run `inv` on a node; the node's InvocationResult, or a clear error."""
        ray = _ray()
        rid = inv.request_id
        agent = self._pick()
        if agent is None:
            return InvocationResult("error", error=f"{NO_NODES}: no Ray node is ready to run "
                                    "invocations", request_id=rid)
        wait = self.limits[inv.function].timeout_s + ANSWER_GRACE_S
        try:
            ref = agent.handle.invoke.remote(inv.function, event, inv.label,
                                             inv.response_bound, inv.principal, rid)
            return ray.get(ref, timeout=wait)  # type: ignore[no-any-return]
        except ray.exceptions.GetTimeoutError:
            log.warning("ray executor: node %s did not answer %s within %.0fs",
                        agent.node_id[:12], rid, wait)
            self._mark_failed(agent)
            return InvocationResult(
                "error", error=f"{NODE_LOST}: the node running the invocation did not answer "
                f"within {wait:.0f}s", request_id=rid)
        except ray.exceptions.RayTaskError as e:
            # An exception inside the agent (the node's invoker answers every outcome itself,
            # so this is a platform bug): logged here, not shown to the invoker.
            log.error("ray executor: invocation %s failed inside the node agent: %s", rid, e)
            return InvocationResult("error", error="internal error on the node",
                                    request_id=rid)
        except ray.exceptions.RayError as e:
            log.warning("ray executor: node %s lost while running %s (%s)",
                        agent.node_id[:12], rid, type(e).__name__)
            self._mark_failed(agent)
            return InvocationResult(
                "error", error=f"{NODE_LOST}: the node running the invocation was lost "
                f"({type(e).__name__}); what it did until then may have happened",
                request_id=rid)
        finally:
            with self._lock:
                agent.inflight -= 1

    def _mark_failed(self, agent: _Agent) -> None:
        # Not picked again; the watcher drops it (node dead) or replaces it (node alive).
        with self._lock:
            agent.failed = True

    def executed_per_node(self) -> dict[str, int]:
        """node id -> invocations its current agent ran."""
        ray = _ray()
        with self._lock:
            agents = [a for a in self._agents.values() if a.ready and not a.failed]
        counts = ray.get([a.handle.executed.remote() for a in agents], timeout=30)
        return {a.node_id: int(n) for a, n in zip(agents, counts, strict=True)}

    def nodes_busy(self) -> bool:
        ray = _ray()
        with self._lock:
            agents = [a for a in self._agents.values() if a.ready and not a.failed]
        refs = [a.handle.busy.remote() for a in agents]
        try:
            return any(ray.get(refs, timeout=10))
        except ray.exceptions.RayError:
            return False  # a lost node runs nothing any more

    # ------------------------------------------------------------------ the bridge
    def _serve_bridge(self) -> None:
        ray = _ray()
        assert self._serve_pool is not None
        while not self._stop.is_set():
            try:
                batch = ray.get(self._bridge.take.remote(1.0), timeout=30)
            except ray.exceptions.ActorDiedError:
                if self._stop.is_set():
                    return
                # The calls it held fail on their nodes (the guests get an internal error);
                # a new bridge under the same name serves the next ones.
                log.error("ray executor: the bridge actor died; starting a new one")
                time.sleep(1.0)
                self._make_bridge(ray)
                continue
            except Exception:
                if self._stop.is_set():
                    return
                log.exception("ray executor: the bridge failed; retrying")
                time.sleep(1.0)
                continue
            for rid, op, payload in batch:
                self._serve_pool.submit(self._answer, rid, op, payload)

    def _answer(self, rid: int, op: str, payload: dict[str, Any]) -> None:
        try:
            reply: tuple[Any, ...] = ("ok", self._serve(op, payload))
        except GuestVisibleError as e:
            reply = ("guest", e.kind, str(e))
        except Exception as e:
            log.exception("ray executor: serving %s for a node failed", op)
            reply = ("internal", type(e).__name__)
        try:
            self._bridge.answer.remote(rid, reply)
        except Exception:
            log.exception("ray executor: could not answer the bridge")

    def _serve(self, op: str, payload: dict[str, Any]) -> Any:
        """One call a node's monitor passed on (its labels were checked by that monitor)."""
        if op not in BRIDGE_OPS:
            raise ValueError(f"unknown bridge op {op!r}")
        lattice = self.runtime.lattice
        p = payload["parent"]
        parent = Invocation(request_id=p["request_id"], function=p["function"],
                            label=lattice.check(p["label"]),
                            response_bound=lattice.check(p["label"]),
                            deadline=p["deadline"], principal=p["principal"], depth=p["depth"])
        inv = self.invoker
        assert inv is not None
        if op == "invoke_async":
            return inv.invoke_async(parent, payload["function"], payload["event"],
                                    lattice.check(payload["label"]))
        if op == "stream_put":
            return inv.stream_put(parent, payload["stream"], payload["record"],
                                  payload["partition_key"], lattice.check(payload["label"]))
        if op == "workflow_start":
            return inv.workflow_start(parent, payload["workflow"], payload["name"],
                                      payload["event"], lattice.check(payload["label"]))
        return inv.task_complete(parent, payload["token"], payload["output"], payload["error"])
