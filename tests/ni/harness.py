"""Runs generated cases on the real platform: two running apps (worlds A and B), each with its
own store, its own local HTTP server and SMTP server, confined function slots whose code is
rewritten for every run, and a stream whose consumer (fixed code) logs what it is delivered.
Quiescence includes the stream engine: every record delivered before a window closes.

Why rewriting works: the manifest sets `prefork = 0`, so a child is forked (and imports the
function's module) only when an invocation takes it, i.e. after the harness wrote the file.
Every module checks a per-run token in its event and logs STALE-MODULE otherwise, which the
harness turns into a hard error, so a stale child can never pass silently.
"""

from __future__ import annotations

import email
import itertools
import re
import shutil
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from ni.lang import (
    CHANNELS,
    CONSUMER,
    CONSUMER_SOURCE,
    KEYS,
    SLOTS,
    STREAM,
    TABLES,
    TIMEOUTS,
    WF_DEFINITION,
    WF_SECRET,
    WF_TASK,
    WF_TASK_SOURCE,
    WORKFLOW,
    Case,
    compile_program,
    flows,
    table_name,
)
from ni.trace import (
    Execution,
    Record,
    Trace,
    Window,
    record_value,
    request_event_x,
    seed_value,
)
from trapeze import App

QUIESCE_TIMEOUT_S = 30.0
_RUN_IDS = itertools.count(1)

# Everything the platform did in world A during the property runs, for the coverage report:
# how many times, and in how many runs (examples); RUNS_KEY counts the runs themselves.
COVERAGE: Counter[str] = Counter()
COVERAGE_RUNS: Counter[str] = Counter()
RUNS_KEY = "runs"


class HarnessError(RuntimeError):
    """The harness itself failed (not a noninterference violation)."""


_HEX_ID = re.compile(r"[0-9a-f]{12,}")
_APP_PATH = re.compile(r"\S*/app[AB]\b")


def normalise_text(text: str | None) -> str:
    """Drop what differs between worlds without being secret: ids and the app's path."""
    if not text:
        return ""
    return _APP_PATH.sub("<app>", _HEX_ID.sub("<id>", text))


# ------------------------------------------------------------------------- output servers
class _Web(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - the stdlib's naming
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length).decode(errors="replace")
        self.server.record(self.path, body)  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


class WebServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Web)
        self.received: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def record(self, path: str, body: str) -> None:
        prefix, _, rest = path.lstrip("/").partition("/")
        channel = {"low": "web_low", "mida": "web_mida"}.get(prefix, f"?{prefix}")
        with self.lock:
            self.received.append((channel, rest, body))

    def take(self) -> list[tuple[str, str, str]]:
        with self.lock:
            out, self.received = self.received, []
        return out

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _Inbox:
    def __init__(self) -> None:
        self.received: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        msg = email.message_from_bytes(envelope.original_content or envelope.content)
        body = msg.get_payload(decode=True) if not msg.is_multipart() else b""
        channel = str(envelope.mail_from).split("@", 1)[0]
        with self.lock:
            self.received.append((channel, str(msg["Subject"]),
                                  (body or b"").decode(errors="replace").strip()))
        return "250 OK"

    def take(self) -> list[tuple[str, str, str]]:
        with self.lock:
            out, self.received = self.received, []
        return out


def _free_port() -> int:
    # aiosmtpd probes the port it is given, so it cannot bind port 0 itself.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ----------------------------------------------------------------------------- manifest
def manifest(name: str, web_port: int, smtp_port: int) -> str:
    out = [
        "[app]",
        f'name = "ni-{name}"',
        "",
        "[labels]",
        'bottom = ["low"]',
        'low = ["mid:*"]',
        '"mid:*" = ["high"]',
        'high = ["top"]',
        "",
    ]
    for cname, kind, bound in CHANNELS:
        out += [f"[channels.{cname}]", f'kind = "{kind}"', f'bound = "{bound}"', "timeout = 5"]
        if kind == "http":
            prefix = {"web_low": "low", "web_mida": "mida"}[cname]
            out.append(f'url_prefixes = ["http://127.0.0.1:{web_port}/{prefix}/"]')
        else:
            out += ['host = "127.0.0.1"', f"port = {smtp_port}", f'sender = "{cname}@ni.test"']
        out.append("")
    for slot in SLOTS:
        out += [
            f"[functions.{slot}]",
            f'handler = "functions/{slot}.py:handler"',
            f"timeout = {TIMEOUTS[slot]}",
            # no pre-forked children: a child imports the module only when it is taken
            "prefork = 0",
            "retries = 1",
            "concurrency = 32",
            f'env = {{ NI_WEB = "http://127.0.0.1:{web_port}/" }}',
            "",
        ]
    # The consumer's code never changes, so its children may be forked ahead of demand.
    out += [f"[functions.{CONSUMER}]", f'handler = "functions/{CONSUMER}.py:handler"',
            f"timeout = {TIMEOUTS[CONSUMER]}", "concurrency = 32", ""]
    out += [f"[streams.{STREAM}]", f'consumers = ["{CONSUMER}"]', ""]
    # The workflow's task never changes either.
    out += [f"[functions.{WF_TASK}]", f'handler = "functions/{WF_TASK}.py:handler"',
            f"timeout = {TIMEOUTS[WF_TASK]}", "concurrency = 32", ""]
    out += [f"[workflows.{WORKFLOW}]", f'definition = "workflows/{WORKFLOW}.json"', ""]
    out += ["[limits]", "concurrency = 128", "queue = 256", ""]
    return "\n".join(out)


# -------------------------------------------------------------------------------- worlds
class World:
    """One running app with its own store and output servers."""

    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.app_dir = root / f"app{name}"  # same length for A and B: see nilib.sanitize
        shutil.rmtree(self.app_dir, ignore_errors=True)
        (self.app_dir / "functions").mkdir(parents=True)
        self.web = WebServer()
        self.inbox = _Inbox()
        self.smtp = Controller(self.inbox, hostname="127.0.0.1", port=_free_port())
        self.smtp.start()
        (self.app_dir / "trapeze.toml").write_text(
            manifest(name, self.web.server_address[1], self.smtp.port))
        for slot in SLOTS:
            (self.app_dir / "functions" / f"{slot}.py").write_text(
                "def handler(event, context):\n    return None\n")
        (self.app_dir / "functions" / f"{CONSUMER}.py").write_text(CONSUMER_SOURCE)
        (self.app_dir / "functions" / f"{WF_TASK}.py").write_text(WF_TASK_SOURCE)
        (self.app_dir / "workflows").mkdir()
        (self.app_dir / "workflows" / f"{WORKFLOW}.json").write_text(WF_DEFINITION)
        self._old_executions: set[str] = set()  # executions of earlier runs
        self.rt = App.load(self.app_dir).start(store=f"sqlite:///{root / f'store{name}.db'}")
        self._pending_async = 0
        self._lock = threading.Lock()
        self._audit_mark = 0
        self._log_mark = 0
        self.counting = False
        self._seen: set[str] = set()  # what this run exercised (world A, when counting)
        self._instrument()

    # -- instrumentation (harness-side wrappers on *instances*, calling the class methods
    # dynamically so that mutations patched onto the classes still take effect)
    def _instrument(self) -> None:
        invoker, monitor = self.rt.invoker, self.rt.monitor
        assert invoker is not None
        cls = type(invoker)

        def invoke_async(parent: Any, function: str, event: Any, label: str) -> str:
            with self._lock:
                self._pending_async += 1
            try:
                return cls.invoke_async(invoker, parent, function, event, label)
            except BaseException:
                with self._lock:
                    self._pending_async -= 1
                raise

        def run_with_retries(*args: Any) -> None:
            try:
                cls._run_with_retries(invoker, *args)
            finally:
                with self._lock:
                    self._pending_async -= 1

        def reply(inv: Any, outcome: Any) -> Any:
            result = cls._reply(invoker, inv, outcome)
            kind = {"ok": "returned", "error": "raised", "timeout": "timed out",
                    "crash": "crashed"}.get(outcome.status, outcome.status)
            self._count(f"outcome: {kind}")
            if result.status == "withheld":
                self._count("outcome: withheld reply")
            how = ("stream consumer" if inv.function == CONSUMER
                   else "async" if inv.response_bound == "top" and inv.parent
                   else "sync-nested" if inv.parent else "top-level")
            self._count(f"invocation: {how}")
            return result

        mcls = type(monitor)

        def handle(inv: Any, op: str, args: Any) -> Any:
            self._count(f"op: {op}")
            try:
                return mcls.handle(monitor, inv, op, args)
            except Exception as e:
                self._count(f"op error: {op} -> {type(e).__name__}")
                raise

        invoker.invoke_async = invoke_async  # type: ignore[method-assign]
        invoker._run_with_retries = run_with_retries  # type: ignore[method-assign]
        invoker._reply = reply  # type: ignore[method-assign]
        monitor.handle = handle  # type: ignore[method-assign]

    def _count(self, key: str) -> None:
        if self.counting:
            COVERAGE[key] += 1
            self._seen.add(key)

    def close(self) -> None:
        self.rt.close(drain_timeout=10)
        self.web.close()
        self.smtp.stop()

    # -- running
    def load(self, case: Case, gen: str) -> None:
        for slot in SLOTS:
            path = self.app_dir / "functions" / f"{slot}.py"
            path.write_text(compile_program(case.programs[slot], gen))
        shutil.rmtree(self.app_dir / "functions" / "__pycache__", ignore_errors=True)

    def quiesce(self) -> None:
        invoker, engines = self.rt.invoker, self.rt.engines
        assert invoker is not None and engines is not None
        deadline = time.monotonic() + QUIESCE_TIMEOUT_S
        calm = 0
        while calm < 3:  # idle on three consecutive polls: nothing is between two steps
            with self._lock:
                idle = self._pending_async == 0 and invoker._inflight == 0
            # every stream record delivered (its consumer's log is part of this window), every
            # workflow execution finished (likewise its task's)
            idle = (idle and engines.streams.idle()
                    and not engines.workflows.db.executions(status="RUNNING"))
            calm = calm + 1 if idle else 0
            if time.monotonic() > deadline:
                raise HarnessError(f"world {self.name} did not quiesce")
            time.sleep(0.01)

    def window(self) -> Window:
        """What happened since the previous window (all labels; projection comes later)."""
        w = Window()
        w.outputs = self.web.take() + self.inbox.take()
        # Page with since_seq: the system tables return at most `limit` rows per call.
        while True:
            logs = self.rt.system.logs(visible=lambda _label: True, since_seq=self._log_mark,
                                       limit=1000)
            for r in logs:
                self._log_mark = max(self._log_mark, r.seq)
                if "STALE-MODULE" in r.text:
                    raise HarnessError("a child ran an older version of a generated module")
                w.logs.append((r.function, r.label, normalise_text(r.text)))
            if len(logs) < 1000:
                break
        while True:
            entries = self.rt.system.audit(since_seq=self._audit_mark, limit=1000)
            for a in entries:
                self._audit_mark = max(self._audit_mark, a.seq)
                detail = tuple(sorted((k, normalise_text(str(v))) for k, v in a.detail.items()))
                w.audit.append((a.kind, a.function, a.label, detail))
            if len(entries) < 1000:
                break
        return w

    def run(self, case: Case, gen: str, *, observers: tuple[str, ...] = ()) -> Trace:
        self._seen = set()
        try:
            return self._run(case, gen, observers)
        finally:
            if self.counting:
                COVERAGE_RUNS[RUNS_KEY] += 1
                COVERAGE_RUNS.update(self._seen)

    def _run(self, case: Case, gen: str, observers: tuple[str, ...]) -> Trace:
        self.load(case, gen)
        ns = {t: table_name(gen, t) for t in TABLES}
        self.quiesce()
        self.window()  # start from a clean window
        trace = Trace()
        for s in (*case.seed, WF_SECRET):
            table = ns.get(s.t) or table_name(gen, s.t)
            self.rt.view(s.label).put(table, s.k, seed_value(case, s, self.name))
        assert self.rt.engines is not None
        for r in case.records:
            self.rt.engines.streams.put(STREAM, {"v": record_value(case, r, self.name)},
                                        f"{gen}.{r.part}", r.label)
        self.quiesce()
        trace.setup = self.window()  # the consumer's lines for the seeded records
        background: list[Any] = []
        pool = ThreadPoolExecutor(max_workers=4) if case.concurrent else None
        try:
            for req in case.requests:
                event = {"x": request_event_x(case, req, self.name), "gen": gen}
                if pool is not None and not flows(req.label, case.observer):
                    # Requests the observer cannot see run concurrently with everything.
                    background.append(pool.submit(self.rt.invoke, req.slot, event,
                                                  as_label=req.label))
                    trace.responses.append((req.label, "background", None, ""))
                    trace.windows.append(Window())
                    continue
                res = self.rt.invoke(req.slot, event, as_label=req.label)
                self.quiesce()
                trace.responses.append((req.label, res.status, res.value,
                                        normalise_text(res.error)))
                trace.windows.append(self.window())
            for f in background:
                f.result(timeout=QUIESCE_TIMEOUT_S)
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
        self.quiesce()
        if trace.windows:
            last = self.window()
            trace.windows[-1].outputs += last.outputs
            trace.windows[-1].logs += last.logs
            trace.windows[-1].audit += last.audit
        for t in TABLES:
            for k in KEYS:
                trace.raw[(t, k)] = [(lab, None if tomb else v, tomb)
                                     for _seq, lab, v, tomb in
                                     self.rt.store.raw_facets(ns[t], k)]
        everything = self.stream_tail("top")
        # Sequence numbers count per (stream, label) across runs: this run's records at a
        # label are numbered from the highest number earlier runs left at that label.
        base: dict[str, int] = {}
        for part, lab, n, _v in everything:
            if not part.startswith(gen + "."):
                base[lab] = max(base.get(lab, 0), n)
        trace.stream = self.run_records(everything, gen, base)
        listing = self.executions("top")
        mine = {e["executionArn"] for e in listing} - self._old_executions
        trace.workflows = self.run_executions(listing, gen, mine)
        for _name, start, status, _output, end in trace.workflows:
            self._count(f"workflow: {status.lower()}")
            if end != start:
                self._count("workflow: label rose")
        for obs in observers:
            trace.views[obs] = self.view(obs, ns)
            trace.views[obs]["stream"] = self.run_records(self.stream_tail(obs), gen, base)
            trace.views[obs]["workflows"] = self.run_executions(self.executions(obs), gen,
                                                                mine)
        self._old_executions |= mine
        return trace

    def executions(self, label: str) -> list[dict[str, Any]]:
        """The workflow's executions as a viewer at `label` may see them (the platform's own
        listing, what `trapeze workflow list` shows), oldest first."""
        assert self.rt.engines is not None
        return self.rt.engines.workflows.list(label, WORKFLOW)

    @staticmethod
    def run_executions(listing: list[dict[str, Any]], gen: str,
                       mine: set[str]) -> list[Execution]:
        """This run's executions: (name without the run's prefix, or "<auto>" for one the
        platform named; start label; status; the output's value)."""
        prefix = gen + "."
        out: list[Execution] = []
        for e in listing:
            if e["executionArn"] not in mine:
                continue
            name = e["name"][len(prefix):] if e["name"].startswith(prefix) else "<auto>"
            output = e["output"].get("v") if isinstance(e["output"], dict) else e["output"]
            out.append((name, e["startLabel"], e["status"], output, e["label"]))
        return out

    def stream_tail(self, label: str) -> list[Record]:
        """Every record of the stream visible at `label`, oldest first, with its partition,
        label, sequence number and value, through the platform's own reader."""
        assert self.rt.engines is not None
        out: list[Record] = []
        for r in self.rt.engines.streams.tail(STREAM, label, limit=10**9):
            n, _, lab = r["sequenceNumber"].partition("/")
            out.append((r["partitionKey"], lab, int(n), r["data"].get("v")))
        return out

    @staticmethod
    def run_records(records: list[Record], gen: str, base: dict[str, int]) -> list[Record]:
        prefix = gen + "."
        return [(part[len(prefix):], lab, n - base.get(lab, 0), v)
                for part, lab, n, v in records if part.startswith(prefix)]

    def view(self, obs: str, ns: dict[str, str]) -> dict[str, Any]:
        """The store as the platform's own API shows it at `obs`."""
        v = self.rt.view(obs)
        gets, facets = {}, {}
        scans: dict[str, list[tuple[str, Any]]] = {}
        for t in TABLES:
            for k in KEYS:
                gets[(t, k)] = v.get(ns[t], k)
                facets[(t, k)] = [tuple(f) for f in v.facets(ns[t], k)]
            rows = [tuple(r) for r in v.scan(ns[t], limit=1000)]
            if rows:
                scans[t] = rows
        return {"get": gets, "facets": facets, "scan": scans}


class Worlds:
    def __init__(self, root: Path) -> None:
        self.a = World(root, "A")
        self.b = World(root, "B")
        self._pool = ThreadPoolExecutor(max_workers=2)

    def run(self, case: Case) -> tuple[Trace, Trace]:
        """The same case in both worlds, in parallel (they share nothing but the CPU)."""
        gen = f"g{next(_RUN_IDS)}"
        obs = (case.observer,)
        fa = self._pool.submit(self.a.run, case, gen, observers=obs)
        fb = self._pool.submit(self.b.run, case, gen, observers=obs)
        return fa.result(), fb.result()

    def run_one(self, case: Case) -> Trace:
        gen = f"g{next(_RUN_IDS)}"
        return self.a.run(case, gen, observers=(case.observer,))

    @contextmanager
    def counting(self) -> Iterator[None]:
        self.a.counting = True
        try:
            yield
        finally:
            self.a.counting = False

    def close(self) -> None:
        self._pool.shutdown()
        self.a.close()
        self.b.close()


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.monotonic()
    return fn(), time.monotonic() - t0
