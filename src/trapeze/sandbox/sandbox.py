"""`Sandbox`: one function's zygote and its pre-forked, confined children (monitor side)."""

from __future__ import annotations

import itertools
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import msgpack

from trapeze.sandbox import syscalls as sc
from trapeze.sandbox.exchange import LogBuffer, OnCall, converse, drain_log, event_frame
from trapeze.sandbox.probe import probe
from trapeze.sandbox.spec import ConfinementUnavailable, Outcome, SandboxSpec

log = logging.getLogger("trapeze.sandbox")

# Per-slot uids for children when the zygote runs as root. Nobody owns these uids on the
# host; each Sandbox in this process gets its own block, and the block base depends on the
# pid so that two monitors on one machine are unlikely to share one.
UID_REGION = 2_000_000_000
UID_BLOCK = 1024
_uid_blocks = itertools.count()

ZYGOTE_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    # A multi-threaded zygote would deadlock children at fork: keep numeric libraries serial.
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
}

SIGNAL_REASONS = {
    signal.SIGSYS: "a forbidden system call (seccomp)",
    signal.SIGXCPU: "the CPU time limit",
    signal.SIGXFSZ: "the file size limit",
    signal.SIGKILL: "SIGKILL",
    signal.SIGSEGV: "a segmentation fault",
}


def _block_base() -> int:
    return UID_REGION + ((os.getpid() % 256) * 64 + next(_uid_blocks) % 64) * UID_BLOCK


@dataclass
class _Child:
    cid: int
    chan: socket.socket
    log_fd: int
    pidfd: int
    pid: int | None

    def kill(self) -> None:
        try:
            sc.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        except OSError:
            pass  # already gone

    def close(self) -> None:
        self.chan.close()
        for fd in (self.log_fd, self.pidfd):
            try:
                os.close(fd)
            except OSError:
                pass


def _pid_of(pidfd: int) -> int | None:
    try:
        with open(f"/proc/self/fdinfo/{pidfd}") as fh:
            for line in fh:
                if line.startswith("Pid:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class Sandbox:
    def __init__(
        self,
        spec: SandboxSpec,
        *,
        unconfined_dev: bool = False,
        zygote_uid: int | None = None,
        max_slots: int = 256,
    ) -> None:
        """`zygote_uid`: run the zygote as this ordinary uid (user-namespace confinement,
        as an unprivileged deployment has it) although the monitor is root."""
        self.spec = spec
        self.unconfined_dev = unconfined_dev
        self.zygote_uid = zygote_uid
        self.max_slots = min(max_slots, UID_BLOCK)
        self.mode: str | None = None
        self.landlock_abi = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._ctrl: socket.socket | None = None
        self._ready: queue.Queue[_Child | None] = queue.Queue()
        self._send_lock = threading.Lock()
        self._status_cv = threading.Condition()
        self._statuses: dict[int, tuple[int, int, float]] = {}
        self._wanted: set[int] = set()
        self._closed = False
        self._zygote_dead = False
        self._reader: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self.unconfined_dev:
            log.warning(
                "!!! UNCONFINED DEVELOPMENT MODE for function %r: its code runs with the "
                "monitor's privileges, network and files. Never use this with untrusted code.",
                self.spec.function,
            )
        else:
            probe(need_userns=os.geteuid() != 0 or self.zygote_uid is not None)
            if os.geteuid() == 0:
                # Children run as uids that own nothing: the app must be readable by
                # "others", like a deployment package. (Its ancestors need not be: the
                # zygote's private mount view opens those up.)
                mode = self.spec.app_dir.stat().st_mode
                if mode & 0o005 != 0o005:
                    raise ConfinementUnavailable(
                        "app directory permissions",
                        f"{self.spec.app_dir} has mode {mode & 0o777:o}; confined functions "
                        "run as unprivileged uids and need it readable (chmod o+rx, and o+r "
                        "on its files)",
                    )
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._proc = subprocess.Popen(
            [sys.executable, "-I", "-m", "trapeze.sandbox.zygote", str(theirs.fileno())],
            env=dict(ZYGOTE_ENV),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            pass_fds=(theirs.fileno(),),
            cwd="/",
            close_fds=True,
        )
        theirs.close()
        self._ctrl = ours
        cfg = self.spec.to_wire()
        cfg.update(
            unconfined=self.unconfined_dev,
            zygote_uid=self.zygote_uid,
            uid_base=_block_base(),
            max_slots=self.max_slots,
        )
        ours.send(msgpack.packb(cfg, use_bin_type=True))
        ours.settimeout(60)
        try:
            data = ours.recv(1 << 20)
        except TimeoutError:
            self.close()
            raise ConfinementUnavailable("zygote", "the zygote did not start within 60 s") from None
        ours.settimeout(None)
        hello = msgpack.unpackb(data, raw=False) if data else {"t": "fatal", "error": "exited"}
        if hello.get("t") != "hello":
            self.close()
            raise ConfinementUnavailable(
                str(hello.get("mechanism", "zygote")), str(hello.get("error"))
            )
        self.mode = hello["mode"]
        self.landlock_abi = hello["landlock_abi"]
        self._reader = threading.Thread(
            target=self._read_control, name=f"trapeze-zygote-{self.spec.function}", daemon=True
        )
        self._reader.start()
        if self.spec.prefork:
            self._send({"op": "spawn", "n": self.spec.prefork})

    def close(self) -> None:
        self._closed = True
        if self._ctrl is not None:
            try:
                self._ctrl.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
        while True:
            try:
                child = self._ready.get_nowait()
            except queue.Empty:
                break
            if child is not None:
                child.kill()
                child.close()
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self._ctrl is not None:
            self._ctrl.close()
        self._ready.put(None)  # wake any waiting run()

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- zygote control -------------------------------------------------------------------

    def _send(self, msg: dict[str, Any]) -> None:
        assert self._ctrl is not None
        with self._send_lock:
            self._ctrl.send(msgpack.packb(msg, use_bin_type=True))

    def _read_control(self) -> None:
        assert self._ctrl is not None
        try:
            while True:
                data, fds, _flags, _addr = socket.recv_fds(self._ctrl, 1 << 16, 8)
                if not data:
                    break
                msg = msgpack.unpackb(data, raw=False)
                if msg["t"] == "ready" and len(fds) == 3:
                    chan = socket.socket(fileno=fds[0])
                    child = _Child(msg["cid"], chan, fds[1], fds[2], _pid_of(fds[2]))
                    with self._status_cv:
                        self._wanted.add(child.cid)
                    self._ready.put(child)
                elif msg["t"] == "exit":
                    with self._status_cv:
                        if msg["cid"] in self._wanted:
                            self._statuses[msg["cid"]] = (msg["code"], msg["signal"], msg["cpu"])
                            self._status_cv.notify_all()
                else:
                    for fd in fds:
                        os.close(fd)
        except OSError:
            pass
        finally:
            self._zygote_dead = True
            self._ready.put(None)

    def _take(self, deadline: float) -> _Child | None:
        self._send({"op": "spawn", "n": 1})
        while True:
            try:
                child = self._ready.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return None
            if child is None:
                self._ready.put(None)  # keep waking the others
                return None
            return child

    def _exit_status(self, cid: int, timeout: float) -> tuple[int, int, float] | None:
        end = time.monotonic() + timeout
        with self._status_cv:
            while cid not in self._statuses:
                left = end - time.monotonic()
                if left <= 0 or self._zygote_dead:
                    break
                self._status_cv.wait(left)
            self._wanted.discard(cid)
            return self._statuses.pop(cid, None)

    # --- invocations ----------------------------------------------------------------------

    def run(self, event: Any, context: dict[str, Any], on_call: OnCall) -> Outcome:
        if self._ctrl is None or self._closed:
            raise RuntimeError("Sandbox.run() before start() or after close()")
        t0 = time.monotonic()
        ctx = dict(context)
        ctx.setdefault("function_name", self.spec.function)
        ctx.setdefault("request_id", uuid.uuid4().hex)
        ctx.setdefault("deadline", time.time() + self.spec.timeout_s)
        ctx.setdefault("memory_limit_in_mb", self.spec.memory_mb)
        frame = event_frame(event, ctx)
        if len(frame) > self.spec.max_message_bytes:
            return Outcome("error", error=f"LimitExceeded: the event is {len(frame)} bytes, "
                           f"over the limit of {self.spec.max_message_bytes}")
        deadline = t0 + self.spec.timeout_s
        child = self._take(deadline)
        if child is None:
            reason = "the zygote is gone" if self._zygote_dead else "no child became ready"
            status = "crash" if self._zygote_dead else "timeout"
            return Outcome(status, error=reason, duration_s=time.monotonic() - t0)
        logbuf = LogBuffer(self.spec.max_log_bytes)
        try:
            ex = converse(
                child.chan, child.log_fd, child.pidfd, frame, deadline, on_call,
                self.spec.max_message_bytes, logbuf,
            )
            # Whatever the outcome, nothing of the invocation may outlive it: killing the
            # child, the init of its PID namespace, takes its threads and processes along.
            child.kill()
            drain_log(child.log_fd, logbuf)
            outcome = Outcome(ex.status, value=ex.value, error=ex.error, pid=child.pid)
            if ex.status == "timeout":
                outcome.error = f"timed out after {self.spec.timeout_s:g} s"
            elif ex.status == "eof":
                outcome.status = "crash"
                outcome.error = self._crash_reason(child.cid)
            elif ex.status == "protocol":
                log.warning("function %s: %s; child killed", self.spec.function, ex.error)
            if ex.status not in ("eof",):
                with self._status_cv:
                    self._wanted.discard(child.cid)
                    self._statuses.pop(child.cid, None)
        finally:
            child.close()
        outcome.log = logbuf.text()
        outcome.duration_s = time.monotonic() - t0
        return outcome

    def _crash_reason(self, cid: int) -> str:
        status = self._exit_status(cid, timeout=2.0)
        if status is None:
            return "the function's process died (exit status unknown)"
        code, sig, cpu = status
        if sig in (signal.SIGKILL, signal.SIGXCPU) and cpu >= self.spec.cpu_limit_s - 0.05:
            return (
                f"the function's process was killed by {signal.Signals(sig).name}: it used "
                f"{cpu:.2f} s of CPU, the limit is {self.spec.cpu_limit_s} s (RLIMIT_CPU)"
            )
        if sig:
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else sig
            why = SIGNAL_REASONS.get(sig, "a signal")  # type: ignore[call-overload]
            return f"the function's process was killed by {name}: {why}"
        if code == 70:
            return "the function's process failed to confine itself (see log)"
        return f"the function's process exited with code {code} without a result"
