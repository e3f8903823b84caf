"""The benchmark baseline: one warm, unconfined worker process per function.

Like a warm Lambda container: the module is imported once and the handler is called for
every invocation in the same process, one at a time. Same wire protocol and guest API as
the sandbox, no confinement, no isolation between invocations. Never for untrusted code.
"""

from __future__ import annotations

import importlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import msgpack

from trapeze.sandbox.exchange import LogBuffer, OnCall, converse, drain_log, event_frame
from trapeze.sandbox.spec import Outcome, SandboxSpec


class WarmWorker:
    def __init__(self, spec: SandboxSpec) -> None:
        self.spec = spec
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._chan: socket.socket | None = None
        self._log_fd = -1
        self._pidfd = -1

    def start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        log_r, log_w = os.pipe()
        cfg = msgpack.packb(
            {
                "app_dir": str(self.spec.app_dir),
                "module": self.spec.module,
                "attribute": self.spec.attribute,
                "max_message_bytes": self.spec.max_message_bytes,
                "preload": list(self.spec.preload),
            }
        )
        env = dict(self.spec.env)
        env.setdefault("PATH", "/usr/bin:/bin")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "trapeze.sandbox.baseline", str(theirs.fileno()), cfg.hex()],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_w,
            stderr=log_w,
            pass_fds=(theirs.fileno(),),
            cwd=str(self.spec.app_dir),
        )
        theirs.close()
        os.close(log_w)
        self._chan, self._log_fd = ours, log_r
        self._pidfd = os.pidfd_open(self._proc.pid)

    def close(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None
        if self._chan is not None:
            self._chan.close()
            self._chan = None
        for fd in (self._log_fd, self._pidfd):
            if fd >= 0:
                os.close(fd)
        self._log_fd = self._pidfd = -1

    def __enter__(self) -> WarmWorker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, event: Any, context: dict[str, Any], on_call: OnCall) -> Outcome:
        t0 = time.monotonic()
        ctx = dict(context)
        ctx.setdefault("function_name", self.spec.function)
        ctx.setdefault("request_id", uuid.uuid4().hex)
        ctx.setdefault("deadline", time.time() + self.spec.timeout_s)
        frame = event_frame(event, ctx)
        with self._lock:  # one invocation at a time, as in a warm container
            if self._proc is None:
                self.start()
            assert self._chan is not None
            logbuf = LogBuffer(self.spec.max_log_bytes)
            ex = converse(
                self._chan, self._log_fd, self._pidfd, frame, t0 + self.spec.timeout_s,
                on_call, self.spec.max_message_bytes, logbuf,
            )
            # Logs printed by this invocation are in the pipe before its result was sent.
            drain_log(self._log_fd, logbuf)
            if ex.status not in ("ok", "error"):
                self.close()  # a timed-out or broken worker is replaced on the next run
        status = "crash" if ex.status == "eof" else ex.status
        error = ex.error
        if ex.status == "timeout":
            error = f"timed out after {self.spec.timeout_s:g} s"
        elif ex.status == "eof":
            error = "the worker process died"
        return Outcome(status, value=ex.value, error=error, log=logbuf.text(),
                       duration_s=time.monotonic() - t0)


def _worker_main() -> None:
    from trapeze.guest import _runtime

    fd = int(sys.argv[1])
    cfg = msgpack.unpackb(bytes.fromhex(sys.argv[2]), raw=False)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.path.insert(0, cfg["app_dir"])
    for name in cfg["preload"]:
        importlib.import_module(name)
    chan = _runtime.install(fd, cfg["max_message_bytes"])
    import_error: BaseException | None = None
    module: Any = None
    try:
        module = importlib.import_module(cfg["module"])
    except BaseException as exc:
        import_error = exc

    def load() -> Any:
        return getattr(module, cfg["attribute"])

    while True:
        _runtime.serve_one(chan, load, import_error)


if __name__ == "__main__":
    _worker_main()


class WarmPool:
    """Up to `size` warm workers for one function, like a warm Lambda fleet scaling to its
    concurrency: each runs one invocation at a time, and a new one starts (once) when all are
    busy. The baseline must use as many cores as the confined mode for the same load, or the
    benchmark would compare a serial baseline against a parallel platform."""

    def __init__(self, spec: SandboxSpec, size: int) -> None:
        self.spec = spec
        self.size = max(1, size)
        self._idle: list[WarmWorker] = []
        self._all: list[WarmWorker] = []
        self._cond = threading.Condition()

    def start(self) -> None:
        # Every worker is started (spawned, modules imported) here, ahead of the first
        # request, as the confined mode forks its children ahead of demand: starting them
        # on demand put up to `size` cold starts per function into each benchmark window
        # and doubled the baseline's Hello Retail time (2.5 s -> 5-6 s, CPU 1.2 -> 3.7 s).
        workers = [WarmWorker(self.spec) for _ in range(self.size)]
        for worker in workers:
            worker.start()
        with self._cond:
            self._all.extend(workers)
            self._idle.extend(workers)

    def _take(self) -> WarmWorker:
        with self._cond:
            while not self._idle and len(self._all) >= self.size:
                self._cond.wait()
            if self._idle:
                return self._idle.pop()
            worker = WarmWorker(self.spec)
            self._all.append(worker)
        try:
            worker.start()  # outside the lock: a start takes a process spawn and an import
        except BaseException:
            with self._cond:
                self._all.remove(worker)
                self._cond.notify()
            raise
        return worker

    def run(self, event: Any, context: dict[str, Any], on_call: OnCall) -> Outcome:
        worker = self._take()
        try:
            return worker.run(event, context, on_call)
        finally:
            with self._cond:
                self._idle.append(worker)
                self._cond.notify()

    def close(self) -> None:
        with self._cond:
            workers, self._all, self._idle = list(self._all), [], []
        for worker in workers:
            worker.close()
