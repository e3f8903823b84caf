"""One test per escape attempt, each asserting the specific mechanism that stops it."""

from __future__ import annotations

import errno
import os
import socket
import time
from pathlib import Path

import pytest
from attack_helpers import MOUNTED_IN_TMP, make_sandbox, pid_alive, wait_for_pool

from fake_monitor import FakeMonitor
from trapeze.sandbox import Sandbox

EPERM, EACCES = errno.EPERM, errno.EACCES


def attack(sb: Sandbox, attack_: str, monitor: FakeMonitor | None = None, **event: object):
    out = sb.run({"attack": attack_, **event}, {}, monitor or FakeMonitor())
    return out


def ok(sb: Sandbox, attack_: str, **event: object):
    out = attack(sb, attack_, **event)
    assert out.status == "ok", out
    return out.value


# --- network: seccomp refuses socket() before the empty netns is even reached ---------------

def test_tcp_to_loopback(sandbox: Sandbox) -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    try:
        assert ok(sandbox, "tcp_loopback", port=srv.getsockname()[1])["errno"] == EPERM
    finally:
        srv.close()


def test_udp_to_loopback(sandbox: Sandbox) -> None:
    assert ok(sandbox, "udp_loopback", port=9)["errno"] == EPERM


def test_unix_socket_path(sandbox: Sandbox, tmp_path: Path) -> None:
    # /run where the test may write there (as root); an ordinary user's own folder otherwise
    # (outside the child's view: if socket() were allowed, connect() would fail ENOENT, not
    # EPERM, and the test would still fail).
    # The pid in the name: neither a session running beside this one nor a socket file left
    # by a killed run (its finally never ran) makes the bind fail with EADDRINUSE.
    path = (f"/run/trapeze-test-{os.getpid()}.sock" if os.geteuid() == 0
            else str(tmp_path / "s.sock"))
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen()
    try:
        assert ok(sandbox, "unix_path", path=path)["errno"] == EPERM
    finally:
        srv.close()
        os.unlink(path)


def test_unix_socket_abstract(sandbox: Sandbox) -> None:
    name = f"trapeze-test-{os.getpid()}"  # abstract names are machine-wide (per netns)
    srv = socket.socket(socket.AF_UNIX)
    srv.bind("\0" + name)
    srv.listen()
    try:
        assert ok(sandbox, "unix_abstract", name=name)["errno"] == EPERM
    finally:
        srv.close()


# --- files: Landlock ------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/var/tmp/trapeze-pwned", "/dev/shm/trapeze-pwned",
                                  "/etc/trapeze-pwned", "/usr/lib/trapeze-pwned"])
def test_write_outside_private_tmp(sandbox: Sandbox, path: str) -> None:
    # Every mount of the children's view but their tmp is read-only (EROFS comes first);
    # Landlock would refuse behind it (EACCES), as it did before the view was read-only.
    assert ok(sandbox, "write_file", path=path)["errno"] == errno.EROFS
    assert not os.path.exists(path)


def test_write_under_root_home(sandbox: Sandbox) -> None:
    # The children's view is read-only but for their tmp (as root, /root is moreover
    # covered by a read-only tmpfs holding only the interpreter): EROFS, and Landlock would
    # refuse with EACCES behind it.
    out = ok(sandbox, "write_file", path="/root/trapeze-pwned")["errno"]
    assert out == errno.EROFS
    assert not os.path.exists("/root/trapeze-pwned")


def test_write_into_app_dir(sandbox: Sandbox) -> None:
    target = Path(sandbox.spec.app_dir) / "pwned.txt"
    assert ok(sandbox, "write_file", path=str(target))["errno"] in (EACCES, errno.EROFS)
    assert not target.exists()


def test_private_tmp_is_writable(sandbox: Sandbox) -> None:
    assert ok(sandbox, "tmp_works") == "fine"


def test_read_etc_shadow(sandbox: Sandbox) -> None:
    assert ok(sandbox, "read_file", path="/etc/shadow")["errno"] == EACCES


def test_read_monitor_environ(sandbox: Sandbox) -> None:
    os.environ["TRAPEZE_TEST_SECRET"] = "s3cret"
    out = ok(sandbox, "read_file", path=f"/proc/{os.getpid()}/environ")
    assert out["errno"] == EACCES


def test_read_monitor_cwd_files(sandbox: Sandbox) -> None:
    secret = Path.cwd() / "pyproject.toml"
    assert secret.exists()
    # EACCES (Landlock), or ENOENT when the checkout lives under /tmp: the child's private
    # /tmp then holds only the app's directory, mounted back read-only.
    assert ok(sandbox, "read_file", path=str(secret))["errno"] in (EACCES, errno.ENOENT)


def test_proc_of_other_processes(sandbox: Sandbox) -> None:
    assert ok(sandbox, "listdir", path="/proc")["errno"] == EACCES
    zygote = sandbox._proc.pid  # type: ignore[union-attr]
    assert ok(sandbox, "read_file", path=f"/proc/{zygote}/cmdline")["errno"] == EACCES
    assert ok(sandbox, "read_file", path="/proc/1/environ")["errno"] == EACCES


# --- processes: seccomp ---------------------------------------------------------------------

def test_exec_bin_sh(sandbox: Sandbox) -> None:
    assert ok(sandbox, "exec_sh")["errno"] == EPERM


def test_fork(sandbox: Sandbox) -> None:
    assert ok(sandbox, "fork")["errno"] == EPERM


@pytest.mark.parametrize(
    "name",
    ["clone", "socket", "ptrace", "process_vm_readv", "io_uring_setup", "unshare", "bpf",
     "mount", "memfd_create", "keyctl"],
)
def test_raw_syscall_denied(sandbox: Sandbox, name: str) -> None:
    assert ok(sandbox, "syscall", name=name) == {"ret": -1, "errno": EPERM}


def test_clone3_reports_enosys(sandbox: Sandbox) -> None:
    # ENOSYS, not EPERM: glibc then falls back to clone(), whose flags BPF can inspect.
    assert ok(sandbox, "syscall", name="clone3") == {"ret": -1, "errno": errno.ENOSYS}


def test_int80_32bit_entry_kills_process(sandbox: Sandbox) -> None:
    out = attack(sandbox, "int80")
    assert out.status == "crash", out
    assert "SIGSYS" in (out.error or "")


# --- signals: Landlock signal scoping and the per-slot uid; a PID namespace with processes ---

def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return [int(p) for p in fh.read().split()]


def _zygote_children(sb: Sandbox) -> list[int]:
    zpid = sb._proc.pid  # type: ignore[union-attr]
    if sb.mode == "userns":
        # As an ordinary user the process the monitor started forks once to become the
        # init of its own PID namespace: the children are that init's.
        (zpid,) = _children(zpid)
    return _children(zpid)


def _live(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped (a child killed after its invocation)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _waiting_siblings(sb: Sandbox, timeout: float = 30.0) -> list[int]:
    """The zygote's children once they are exactly the children waiting in the sandbox:
    its pool, taken in as the zygote reported them; earlier children killed and reaped.
    An extra forked for an earlier invocation that was served by a pool child first is
    alive until the sandbox reads its report and kills it as surplus: counted as a
    sibling (a stable set of live children was enough before), the next invocation took
    it in and killed it, and the test found a "sibling" gone. So the reports are taken
    in here first, and only children the sandbox holds count."""
    end = time.monotonic() + timeout
    while True:
        with sb._ctrl_lock:
            sb._pump(0.05)
            waiting = sorted(c.pid for c in sb._ready if c.pid is not None)
        children = sorted(p for p in _zygote_children(sb) if _live(p))
        if len(waiting) >= sb.spec.prefork and children == waiting:
            return children
        assert time.monotonic() < end, (
            f"the zygote's children {children} are not the waiting ones {waiting}")


def test_signals_to_zygote_monitor_and_siblings(sandbox: Sandbox) -> None:
    # Every child is the init of its own PID namespace (with or without executables): the
    # zygote, the monitor, its siblings, even its own host pid cannot be named from inside
    # (ESRCH), and kill(-1) is refused by seccomp (EPERM). Landlock's signal scoping (each
    # child is its own Landlock domain) and, as root, the per-slot uid would refuse them too.
    assert sandbox.pidns_per_child
    siblings = _waiting_siblings(sandbox)
    targets = [os.getpid(), sandbox._proc.pid, *siblings]  # type: ignore[union-attr]
    res = attack(sandbox, "signal_pids", pids=targets)
    assert res.status == "ok", res
    out = res.value
    for pid in targets:
        assert out[str(pid)]["errno"] == errno.ESRCH, (pid, out)
    assert out["-1"]["errno"] == EPERM, out
    assert out["self"] == 1
    assert all(pid_alive(p) for p in siblings if p != res.pid)
    assert ok(sandbox, "tmp_works") == "fine"


def test_signals_with_executables_own_pid_namespace() -> None:
    # With executables, each child is the init of its own PID namespace: nothing outside
    # it can even be named (ESRCH), and kill(-1) reaches nothing.
    sb = make_sandbox(executables=("/bin/sleep",), prefork=2)
    try:
        assert sb.pidns_per_child
        siblings = _waiting_siblings(sb)
        targets = [os.getpid(), sb._proc.pid, *siblings]  # type: ignore[union-attr]
        res = attack(sb, "signal_pids", pids=targets)
        assert res.status == "ok", res
        out = res.value
        for pid in targets:  # its own host pid included: it cannot be named from inside
            assert out[str(pid)]["errno"] == errno.ESRCH, (pid, out)
        assert out["-1"]["errno"] == errno.ESRCH, out
        assert out["self"] == 1
        assert all(pid_alive(p) for p in siblings if p != res.pid)
    finally:
        sb.close()


# --- the protocol ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    "event",
    [
        {"raw": b"\x00\x00\x00\x05\xc1\xc1\xc1\xc1\xc1"},  # 0xc1 is never valid msgpack
        {"raw": b"\x7f\xff\xff\xff"},  # a frame claiming 2 GB
        {"body": [1, 2, 3]},
        {"body": {"t": "call", "id": 1, "op": "kv.get", "args": {"table": "t", "key": "k"},
                  "label": "top"}},
        {"body": {"t": "call", "id": 1, "op": "kv.get", "args": {"table": "t", "key": "k"},
                  "request_id": "someone-else"}},
        {"body": {"t": "call", "id": 1, "op": "os.system", "args": {}}},
        {"body": {"t": "result", "ok": True, "value": 1, "label": "bottom"}},
    ],
    ids=["garbage", "oversized", "not-a-map", "claims-label", "claims-invocation",
         "unknown-op", "result-with-label"],
)
def test_forged_frames_kill_the_child(sandbox: Sandbox, event: dict) -> None:
    mon = FakeMonitor()
    out = attack(sandbox, "raw_frame", mon, **event)
    assert out.status == "protocol", out
    assert out.error and out.error.startswith("protocol violation")
    assert mon.calls == []
    assert out.pid is not None
    _wait_gone(out.pid)


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    # Generous: the child was killed before run() returned; what is waited for is the
    # kernel's exit and the zygote's reaping, slow on a loaded machine. A process that
    # does outlive its invocation stays, and fails this whatever the timeout.
    end = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < end:
        time.sleep(0.01)
    assert not pid_alive(pid), f"process {pid} outlived its invocation"


# --- outliving the invocation ---------------------------------------------------------------

def test_thread_does_not_outlive_invocation(sandbox: Sandbox) -> None:
    mon = FakeMonitor()
    out = attack(sandbox, "thread_outlives", mon)
    assert out.status == "ok" and out.value == "returned"
    _wait_gone(out.pid)  # type: ignore[arg-type]
    time.sleep(0.5)
    assert ("t", "late") not in mon.store


def test_grandchild_does_not_outlive_invocation() -> None:
    sb = make_sandbox(executables=("/bin/sleep",), prefork=1)
    try:
        marker = "987654.25"
        out = attack(sb, "grandchild", marker=marker)
        assert out.status == "ok", out
        _wait_gone(out.pid)  # type: ignore[arg-type]
        time.sleep(0.2)
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
                except OSError:
                    continue
                assert marker.encode() not in cmd, "the grandchild survived"
    finally:
        sb.close()


# --- resources ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def short() -> object:
    sb = make_sandbox(timeout_s=1.0, cpu_s=30, prefork=1)
    yield sb
    sb.close()


def test_sleeping_forever_times_out(short: Sandbox) -> None:
    out = attack(short, "sleep_forever")
    assert out.status == "timeout" and out.duration_s < 2.0
    _wait_gone(out.pid)  # type: ignore[arg-type]


def test_cpu_spin_times_out(short: Sandbox) -> None:
    out = attack(short, "spin")
    assert out.status == "timeout"
    _wait_gone(out.pid)  # type: ignore[arg-type]


def test_cpu_spin_hits_rlimit_cpu() -> None:
    sb = make_sandbox(timeout_s=10.0, cpu_s=1, prefork=1)
    try:
        out = attack(sb, "spin")
        assert out.status == "crash" and "RLIMIT_CPU" in (out.error or ""), out
        assert out.duration_s < 5
    finally:
        sb.close()


def test_allocating_20_gb(sandbox: Sandbox) -> None:
    out = attack(sandbox, "allocate", gb=20)
    assert out.status == "error" and out.error.startswith("MemoryError"), out


def test_1_gb_result_is_refused() -> None:
    sb = make_sandbox(memory_mb=3072, prefork=1)
    try:
        out = attack(sb, "big_result", mb=1024)
        assert out.status == "error", out
        assert out.error.startswith("LimitExceeded") and "16777216" in out.error, out
    finally:
        sb.close()


def test_filling_the_disk_one_file(sandbox: Sandbox) -> None:
    assert ok(sandbox, "fill_one_file")["errno"] == errno.EFBIG


def test_filling_the_disk_many_files(sandbox: Sandbox) -> None:
    assert ok(sandbox, "fill_many_files")["errno"] == errno.ENOSPC


# --- isolation between invocations ----------------------------------------------------------

def test_no_state_survives_into_next_invocation(sandbox: Sandbox) -> None:
    high = FakeMonitor(label="secret")
    first = sandbox.run({"attack": "leave_state", "secret": "TOPSECRET"}, {"label": "secret"},
                        high)
    assert first.status == "ok" and first.value == 1
    for _ in range(3):  # whichever pre-forked sibling serves it
        low = FakeMonitor(label="public")
        out = sandbox.run({"attack": "look_for_state"}, {"label": "public"}, low)
        assert out.status == "ok", out
        assert sorted(out.value.pop("tmp")) == MOUNTED_IN_TMP
        assert out.value == {"counter": 0, "module": False, "env": None, "json_attr": None}


def test_reused_slot_gets_a_fresh_tmp() -> None:
    # One waiting child: each invocation's child runs in the slot the previous one used (the
    # zygote reuses the last freed slot first), so the slot's tmpfs must have been replaced.
    sb = make_sandbox(prefork=1)
    try:
        pids = set()
        for secret in ("S1", "S2"):
            wait_for_pool(sb)  # the replacement child is waiting: no extra child
            first = sb.run({"attack": "leave_state", "secret": secret}, {}, FakeMonitor())
            assert first.status == "ok", first
            wait_for_pool(sb)
            out = sb.run({"attack": "look_for_state"}, {}, FakeMonitor())
            assert out.status == "ok" and sorted(out.value["tmp"]) == MOUNTED_IN_TMP, out
            pids |= {first.pid, out.pid}
        assert len(pids) == 4
    finally:
        sb.close()


def test_unnamed_tmp_inode_refused(sandbox: Sandbox) -> None:
    # O_TMPFILE would change the slot's tmpfs without any directory event: seccomp says EPERM.
    out = ok(sandbox, "tmpfile")
    assert out["errno"] == EPERM and out["fallback"] == "fine", out


def test_import_time_code_reaches_nothing() -> None:
    sb = make_sandbox(handler="evil_import:handler", prefork=2)
    try:
        out = sb.run({}, {}, FakeMonitor())
        assert out.status == "ok", out
        found = out.value
        assert found["open_fds"] == [0, 1, 2, 3]
        assert found["kill_all"]["errno"] == EPERM  # seccomp: no negative pid
        # Its own PID namespace: pid 1 is itself, and nobody else can be named.
        assert found["kill_pid_1"] == {"ok": "None"}
        assert found["kill_pid_2"]["errno"] == errno.ESRCH
        assert found["proc"]["errno"] == EACCES
        assert found["dev_shm"]["errno"] in (EACCES, errno.EROFS)  # read-only cover first
        assert found["shared_tmp"]["errno"] == errno.EROFS  # read-only view, then Landlock
        assert found["pipe_to_parent"]["errno"] == errno.EBADF
        assert sorted(found["tmp_listing"]) == MOUNTED_IN_TMP
        # The sibling that ran the same import-time code concurrently is unharmed.
        assert sb.run({}, {}, FakeMonitor()).status == "ok"
    finally:
        sb.close()
