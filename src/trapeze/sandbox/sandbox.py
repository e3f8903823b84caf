"""`Sandbox`: one function's zygote and its pre-forked, confined children (monitor side).

No thread of its own: the caller of `run()` reads the zygote's control socket itself (under a
lock), so that taking a waiting child costs one non-blocking recvmsg in the caller's thread
rather than a wake-up of a reader thread and a hand-over through a queue. The zygote keeps
`prefork` children waiting by itself (it replaces each as it exits); `run()` asks for an extra
child only when none is waiting, and for an exit status only when it needs a crash reason.

Extras are asked for by demand, not by caller: no more extras are due than callers wait for a
child; when callers are served by other children (the pool's replacements), the extras no
longer needed are cancelled while the zygote has not forked them yet, and an extra that
arrives when every waiting caller already has a child waiting is killed at once (as is one
left waiting when its caller drew a pool child instead: `_kill_spare_extras`). So a burst
leaves the function with its `prefork` children, not with a child per request that found the
pool empty (before this, 2,000 invocations from 16 threads left ~80 idle confined children).
"""

from __future__ import annotations

import array
import fcntl
import logging
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

import msgpack

from trapeze.sandbox import syscalls as sc
from trapeze.sandbox.exchange import LogBuffer, OnCall, converse, drain_log, event_frame
from trapeze.sandbox.probe import probe
from trapeze.sandbox.spec import ConfinementUnavailable, Outcome, SandboxSpec

log = logging.getLogger("trapeze.sandbox")

# Per-slot uids for children when the zygote runs as root: nobody owns these uids on the
# host. Each Sandbox holds a block of them, claimed with an exclusive flock on the block's
# lock file for as long as it runs (the kernel releases it if the process dies), so that
# no two sandboxes on one machine - in one monitor or in several, as with several Ray nodes
# on one host - ever give two live children the same uid.
UID_REGION = 2_000_000_000
UID_BLOCK = 1024
UID_BLOCKS = 4096  # uids UID_REGION .. UID_REGION + 4096 * 1024 (~2.004e9), below 2**31
UID_LOCK_DIRS = ("/run/trapeze/uid-blocks", "/tmp/trapeze-uid-blocks")

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


def _claim_uid_block() -> tuple[int, int]:
    """(first uid of a block no other live sandbox on this machine holds, the lock's fd)."""
    for directory in UID_LOCK_DIRS:
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        except OSError:
            continue
        # Start at a pid-dependent block so that monitors starting together rarely contend.
        start = os.getpid() % UID_BLOCKS
        for i in range(UID_BLOCKS):
            block = (start + i) % UID_BLOCKS
            fd = os.open(os.path.join(directory, str(block)),
                         os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return UID_REGION + block * UID_BLOCK, fd
        raise ConfinementUnavailable(
            "per-slot uids", f"all {UID_BLOCKS} uid blocks are held by running sandboxes"
        )
    raise ConfinementUnavailable(
        "per-slot uids", f"cannot create a lock directory in any of {UID_LOCK_DIRS}"
    )


FDS_SPACE = socket.CMSG_SPACE(8 * 4)  # up to 8 descriptors per control message


def _fds_of(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    return list(fds)


@dataclass
class _Child:
    cid: int
    chan: socket.socket
    log_fd: int
    pidfd: int
    pid: int | None
    extra: bool = False  # forked for a waiting caller, not replaced when it exits

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
        # Everything below is guarded by _ctrl_lock (reading the control socket included).
        self._ctrl_lock = threading.Lock()
        self._ctrl_poll = select.poll()
        self._ready: deque[_Child] = deque()
        self._waiting = 0  # callers in _take() without a child yet
        self._extras_due = 0  # extras asked of the zygote and neither arrived nor cancelled
        self._cancelling = 0  # of those, how many a cancel not yet answered may drop
        self.surplus_killed = 0  # extras that arrived unneeded (a fork wasted; benchmarks)
        self._send_lock = threading.Lock()
        self._closed = False
        self._zygote_dead = False
        self.pidns_per_child = True
        self.hide_uid = False
        self._uid_base = UID_REGION  # unused unless the zygote runs as root (see start)
        self._uid_lock: int | None = None

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
        # Children drop to per-slot uids only when the zygote runs as real root.
        if os.geteuid() == 0 and self.zygote_uid is None and not self.unconfined_dev:
            self._uid_base, self._uid_lock = _claim_uid_block()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._proc = subprocess.Popen(
            [sys.executable, "-I", "-m", "trapeze.sandbox.zygote", str(theirs.fileno())],
            env=dict(ZYGOTE_ENV),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            pass_fds=(theirs.fileno(),),
            cwd="/",
            close_fds=True,
            # Its own session: a Ctrl-C at the terminal running `trapeze run` reaches the
            # monitor, which shuts down in order, not the zygote (which dies with the monitor:
            # PDEATHSIG, and the control socket closing).
            start_new_session=True,
        )
        theirs.close()
        self._ctrl = ours
        cfg = self.spec.to_wire()
        cfg.update(
            unconfined=self.unconfined_dev,
            zygote_uid=self.zygote_uid,
            uid_base=self._uid_base,
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
        self.pidns_per_child = bool(hello.get("pidns_per_child", True))
        # As root: whether children see the overflow uid instead of their slot's (zygote.py,
        # _unprivileged_userns_works); False where the kernel forbids it, and when not root.
        self.hide_uid = bool(hello.get("hide_uid", False))
        self._ctrl_poll.register(ours.fileno(), select.POLLIN)
        if self.spec.prefork:
            self._send({"op": "pool", "n": self.spec.prefork})

    def close(self) -> None:
        self._closed = True
        if self._ctrl is not None:
            try:
                self._ctrl.shutdown(socket.SHUT_RDWR)  # wakes a run() waiting for a child
            except OSError:
                pass
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
        with self._ctrl_lock:
            while self._ready:
                child = self._ready.popleft()
                child.kill()
                child.close()
            if self._ctrl is not None:
                self._ctrl.close()  # descriptors still in flight are closed with it
        if self._uid_lock is not None:
            # The zygote and every child are gone (killed and waited for above).
            os.close(self._uid_lock)
            self._uid_lock = None

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

    def _pump(self, wait: float) -> None:
        """Take in the zygote's messages; wait up to `wait` s for one. Holds _ctrl_lock."""
        assert self._ctrl is not None
        if wait > 0 and not self._ctrl_poll.poll(max(1, int(wait * 1000))):
            return
        while True:
            try:
                # Not socket.recv_fds(): Python 3.11's ignores its flags argument.
                data, anc, _flags, _addr = self._ctrl.recvmsg(
                    1 << 16, FDS_SPACE, socket.MSG_DONTWAIT
                )
                fds = _fds_of(anc)
            except BlockingIOError:
                return
            except OSError:
                data, fds = b"", []
            if not data:
                self._zygote_dead = True
                return
            msg = msgpack.unpackb(data, raw=False)
            if msg["t"] == "ready" and len(fds) == 3:
                chan = socket.socket(fileno=fds[0])
                child = _Child(msg["cid"], chan, fds[1], fds[2], msg.get("pid"),
                               bool(msg.get("extra")))
                if msg.get("extra"):
                    self._extras_due = max(0, self._extras_due - 1)
                    if len(self._ready) >= self._waiting:
                        # Every waiting caller has a child already: this one is surplus.
                        child.kill()
                        child.close()
                        self.surplus_killed += 1
                        continue
                # Non-blocking once here rather than per invocation in converse().
                chan.setblocking(False)
                os.set_blocking(fds[1], False)
                self._ready.append(child)
            elif msg["t"] == "cancelled":
                for fd in fds:
                    os.close(fd)
                # The zygote dropped `dropped` of the `asked` not forked yet; the rest of the
                # asked are on their way (or here already) and are killed as surplus.
                self._cancelling = max(0, self._cancelling - int(msg["asked"]))
                self._extras_due = max(0, self._extras_due - int(msg["dropped"]))
            else:
                for fd in fds:
                    os.close(fd)

    # Slices in which a waiting caller holds _ctrl_lock, so that others get their turn.
    WAIT_SLICE = 0.05

    def _take(self, deadline: float) -> _Child | None:
        with self._ctrl_lock:
            self._waiting += 1
        try:
            return self._wait_for_child(deadline)
        finally:
            with self._ctrl_lock:
                self._waiting -= 1
                self._kill_spare_extras()
                surplus = self._extras_due - self._cancelling - self._waiting
                if surplus > 0 and not self._closed and not self._zygote_dead:
                    # Served by another child: extras not forked yet are no longer needed.
                    self._cancelling += surplus
                    self._send({"op": "cancel", "n": surplus})

    def _take_ready(self) -> _Child:
        """A waiting child drawn at random, not the oldest: each child's tmpfs and mount
        namespace took the lowest device and inode numbers free when it was forked, so
        with the oldest first a pool of N children went round its numbers in order, and
        /tmp's device number told an invocation how many had run since the last one it
        saw, modulo N (review, session 6: 30 of 30 bits with prefork = 2). At random, the
        settled pool holds the same numbers whatever ran before, and which one an
        invocation gets tells it nothing (tests/attacks/test_review_shared_counters.py)."""
        i = secrets.randbelow(len(self._ready))
        child = self._ready[i]
        del self._ready[i]
        return child

    def _kill_spare_extras(self) -> None:
        """An extra that arrived for a waiting caller is left waiting when the draw gives
        that caller a pool child instead (or when the caller gave up). Kept, it would grow
        the pool past `prefork` (the zygote replaces pool children, not extras) until
        someone took it. Extras beyond the callers still waiting are killed. Holds
        _ctrl_lock."""
        spare = sum(c.extra for c in self._ready) - self._waiting
        if spare > 0:
            for extra in [c for c in self._ready if c.extra][:spare]:
                self._ready.remove(extra)
                extra.kill()
                extra.close()
                self.surplus_killed += 1

    def _wait_for_child(self, deadline: float) -> _Child | None:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self._ctrl_lock.acquire(timeout=left):
                return None
            try:
                if self._closed or self._ctrl is None:
                    return None
                self._pump(0)
                if self._ready:
                    return self._take_ready()
                if self._zygote_dead:
                    return None
                if self._extras_due - self._cancelling < self._waiting:
                    # More callers wait than children are coming: one extra for them (the
                    # pool refills by itself).
                    self._send({"op": "spawn", "n": 1})
                    self._extras_due += 1
                self._pump(min(self.WAIT_SLICE, deadline - time.monotonic()))
                if self._ready:
                    return self._take_ready()
            finally:
                self._ctrl_lock.release()

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
        # The function's own timeout, or less when the invocation's deadline comes first (a
        # synchronous callee never outlives its caller's deadline: runtime/invoker.py).
        budget = min(self.spec.timeout_s, max(0.0, float(ctx["deadline"]) - time.time()))
        deadline = t0 + budget
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
            # child takes its threads along (and, when it may create processes, every
            # process of its PID namespace, of which it is the init).
            child.kill()
            drain_log(child.log_fd, logbuf)
            outcome = Outcome(ex.status, value=ex.value, error=ex.error, pid=child.pid)
            if ex.status == "timeout":
                outcome.error = (f"timed out after {self.spec.timeout_s:g} s"
                                 if budget >= self.spec.timeout_s
                                 else "timed out at its caller's deadline")
            elif ex.status == "eof":
                outcome.status = "crash"
                outcome.error = self._crash_reason(child.pidfd)
            elif ex.status == "protocol":
                log.warning("function %s: %s; child killed", self.spec.function, ex.error)
        finally:
            # Also when converse() raised (a bug on the trusted side, or attacker input it did
            # not anticipate): closing our end alone would leave the child running, detached.
            child.kill()
            child.close()
        outcome.log = logbuf.text()
        outcome.duration_s = time.monotonic() - t0
        return outcome

    def _crash_reason(self, pidfd: int) -> str:
        """Why the child behind `pidfd` ended without a result, from the kernel's record of
        its exit (the zygote keeps nothing of its children: docs/security-model.md)."""
        # The kernel records the status when the zygote has reaped the child, a moment
        # after the child's exit makes the pidfd readable.
        end = time.monotonic() + 2.0
        status = sc.pidfd_exit_status(pidfd)
        while status is None and time.monotonic() < end:
            time.sleep(0.002)
            status = sc.pidfd_exit_status(pidfd)
        if status is None:
            return "the function's process died (exit status unknown)"
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else sig
            if sig == signal.SIGXCPU:
                return (f"the function's process was killed by SIGXCPU: it reached its CPU "
                        f"limit of {self.spec.cpu_limit_s} s (RLIMIT_CPU)")
            if sig == signal.SIGKILL:
                # Not ours (we kill only after the reply or at the deadline): the kernel's,
                # at the CPU hard limit (a function that ignored SIGXCPU) or out of memory.
                return (f"the function's process was killed by SIGKILL: its CPU hard limit "
                        f"of {self.spec.cpu_limit_s + 1} s (RLIMIT_CPU) or out of memory")
            why = SIGNAL_REASONS.get(sig, "a signal")  # type: ignore[call-overload]
            return f"the function's process was killed by {name}: {why}"
        code = os.WEXITSTATUS(status)
        if code == 70:
            return "the function's process failed to confine itself (see log)"
        return f"the function's process exited with code {code} without a result"
