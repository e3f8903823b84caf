"""The per-function zygote: `python -I -m trapeze.sandbox.zygote FD`.

Trusted. Exec'd fresh by the monitor with a clean environment (never forked from it), it
talks to the monitor over a SOCK_SEQPACKET control socket (FD) and:

1. enters its own namespaces once: mount (private propagation, so nothing leaks to the
   host), network (empty: children inherit it for free), IPC (no System V segments shared
   with anything), and as a non-root user a user namespace that makes the rest possible;
2. imports the guest runtime and `preload` modules - never the function's module (a zygote
   that ran untrusted module code could keep what it learns and hand it to later children);
   compiles (never runs) the app's modules, and imports the standard-library modules their
   import statements name;
3. compiles the seccomp filter, the Landlock rule list and the rlimits once, and prepares the
   environment every child inherits;
4. per slot (a uid, used by one child at a time), once: a mount namespace whose /tmp is the
   slot's own tmpfs, and a Landlock ruleset granting exactly that tmp (confine.make_slot).
   After each child the namespace and the ruleset are dropped and the slot's next child gets
   fresh ones, whatever the child did: replacing them only when a child had used its tmp
   told the next child (by the tmpfs's times) one bit about its predecessor (review);
5. keeps `pool` children forked and confined ahead of demand (a replacement is forked when a
   pool child exits, after its invocation, not while it runs), forks one-off extras on
   request (dropping those the monitor cancels before they are forked), and hands the
   monitor each child's channel, log pipe and pidfd, then forgets them. Every child is the
   init of a fresh PID namespace: its thread ids say nothing about other invocations, and
   with declared executables the namespace takes every grandchild down with it;
6. keeps nothing a child could read about its predecessors: every child is a copy of the
   zygote's memory, so the zygote never reads a child's exit status or resource use (it
   reaps with waitid() given no buffers; the monitor reads an exit status from its own
   pidfd), never watches what a child did, and numbers children at random. It only
   learns that a child has exited (its pidfd), never reads from a child, and a child has no
   descriptor leading to the zygote.

The zygote must stay single-threaded: fork() with another thread holding a lock deadlocks
the child, and unshare(CLONE_NEWUSER) refuses multi-threaded callers.
"""

from __future__ import annotations

import gc
import importlib
import os
import resource
import secrets
import selectors
import signal
import socket
import stat
import sys
import traceback
from typing import Any

import msgpack

from trapeze.sandbox import syscalls as sc
from trapeze.sandbox.app_modules import AppModules
from trapeze.sandbox.confine import (
    COVERED_SYSTEM_DIRS,
    MODE_NONE,
    MODE_ROOT,
    MODE_USERNS,
    Plan,
    PrivateDirExposed,
    Slot,
    close_slot,
    confine,
    make_slot,
    plan_rlimits,
    prepare_process,
    private_dir_covers,
)

CONTROL_MAX = 1 << 20


class Fatal(Exception):
    def __init__(self, mechanism: str, message: str) -> None:
        super().__init__(message)
        self.mechanism = mechanism


def _send(ctrl: socket.socket, msg: dict[str, Any], fds: list[int] | None = None) -> None:
    data = msgpack.packb(msg, use_bin_type=True)
    try:
        if fds:
            socket.send_fds(ctrl, [data], fds)
        else:
            ctrl.send(data)
    except (BrokenPipeError, ConnectionResetError):
        os._exit(0)  # the monitor is gone: children die with us (PDEATHSIG)


def _read_roots(app_dir: str) -> list[str]:
    """Directories the child may read: the interpreter, its libraries, trapeze, the app."""
    import trapeze

    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, app_dir}
    roots.add(os.path.dirname(os.path.abspath(trapeze.__file__)))
    for entry in sys.path:
        if entry and os.path.isdir(entry):
            roots.add(os.path.abspath(entry))
    return sorted(roots)


def _open_up(paths: list[str]) -> None:
    """Make `paths` reachable to an unprivileged uid inside this mount namespace only.

    Python often lives under a directory other users cannot traverse (pyenv under /root,
    mode 0700). Rather than loosening the host's permissions, each such ancestor gets a
    read-only tmpfs mounted over it *in the zygote's private mount namespace* holding bind
    mounts of just the entries on the way to `paths`; everything else there (a home
    directory's keys and histories) disappears from the children's view altogether.
    """
    needed: dict[str, set[str]] = {}  # blocked dir -> names below it to keep
    for path in paths:
        real = os.path.realpath(path)
        parts = [p for p in real.split("/") if p]
        for i in range(len(parts)):
            parent = "/" + "/".join(parts[:i])
            try:
                mode = os.stat(parent).st_mode
            except OSError:
                break
            if not mode & stat.S_IXOTH:
                needed.setdefault(parent, set()).add(parts[i])
    for blocked in sorted(needed, key=lambda p: p.count("/")):
        keep = {name: os.open(os.path.join(blocked, name), os.O_PATH) for name in needed[blocked]}
        sc.mount("tmpfs", blocked, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "mode=0755,size=64k")
        for name, fd in keep.items():
            target = os.path.join(blocked, name)
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                os.mkdir(target)
            else:
                os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
            sc.mount(f"/proc/self/fd/{fd}", target, None, sc.MS_BIND | sc.MS_REC, None)
            os.close(fd)
        sc.mount(None, blocked, None, sc.MS_REMOUNT | sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV,
                 None)


def _enter_namespaces(cfg: dict[str, Any], roots: list[str]) -> str:
    """Returns the mode. Runs before any import that could start a thread."""
    zygote_uid = cfg.get("zygote_uid")
    if os.geteuid() == 0:
        try:
            sc.unshare(sc.CLONE_NEWNS)
            sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE, None)
            _open_up(roots + list(cfg["executables"]))
        except OSError as exc:
            raise Fatal("mount namespace", f"cannot set up the private mount view: {exc}") from exc
        if zygote_uid is None:
            try:
                sc.unshare(sc.CLONE_NEWNET | sc.CLONE_NEWIPC)
            except OSError as exc:
                raise Fatal("network namespace", f"unshare(CLONE_NEWNET) failed: {exc}") from exc
            return MODE_ROOT
        # Run the rest as an ordinary user, exactly as an unprivileged deployment would.
        os.setgroups([])
        os.setresgid(zygote_uid, zygote_uid, zygote_uid)
        os.setresuid(zygote_uid, zygote_uid, zygote_uid)
        # A uid change makes us non-dumpable, which leaves /proc/self/uid_map owned by
        # root and unwritable; an ordinary user's process is dumpable.
        sc.prctl(sc.PR_SET_DUMPABLE, 1)
    uid, gid = os.getuid(), os.getgid()
    try:
        sc.unshare(
            sc.CLONE_NEWUSER | sc.CLONE_NEWNS | sc.CLONE_NEWNET | sc.CLONE_NEWIPC | sc.CLONE_NEWPID
        )
    except OSError as exc:
        raise Fatal(
            "user namespaces",
            f"unshare(CLONE_NEWUSER) failed as uid {uid}: {exc}. Enable unprivileged user "
            "namespaces (sysctl kernel.unprivileged_userns_clone=1, user.max_user_namespaces>0; "
            "on Ubuntu also kernel.apparmor_restrict_unprivileged_userns=0) or run as root",
        ) from exc
    with open("/proc/self/uid_map", "w") as fh:
        fh.write(f"0 {uid} 1\n")
    with open("/proc/self/setgroups", "w") as fh:
        fh.write("deny\n")
    with open("/proc/self/gid_map", "w") as fh:
        fh.write(f"0 {gid} 1\n")
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE, None)
    # The new PID namespace applies to our children only: become its init by forking once.
    # The outer process just mirrors the inner one's fate.
    pid = os.fork()
    if pid:
        _, status = os.waitpid(pid, 0)
        os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
    return MODE_USERNS


def _cover_private_dirs(cfg: dict[str, Any], plan: Plan) -> None:
    """Empty, read-only tmpfs over the monitor's directories and shared-memory directories,
    in the zygote's private mount namespace: every slot's namespace is copied from it (and
    the readable paths bound back under /tmp are bound recursively, covers included)."""
    try:
        dirs = private_dir_covers(list(cfg.get("private_dirs", ())), [p for p, _ in plan.rules])
    except PrivateDirExposed as exc:
        raise Fatal("private directories", str(exc)) from exc
    dirs += [d for d in COVERED_SYSTEM_DIRS if os.path.isdir(d)]
    for d in dirs:
        try:
            sc.mount("tmpfs", d, "tmpfs", sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC,
                     "size=4k,nr_inodes=2,mode=0555")
        except OSError as exc:
            raise Fatal("private directories", f"cannot cover {d}: {exc}") from exc


def _make_view_readonly() -> None:
    """Every mount of the zygote's namespace read-only (the slots' tmpfs, mounted later in
    their own namespaces, stay writable). Landlock already refuses children every write
    outside their tmp, but not what a read does to a file's metadata: on a writable mount,
    reading a shared file (relatime) updated its access time, which a later or concurrent
    invocation at any label could stat() — a bit per file (review). A read-only mount
    records no access times, and refuses metadata changes with EROFS whatever seccomp
    allows."""
    try:
        sc.make_tree_readonly("/")
    except OSError as exc:
        raise Fatal("read-only view", f"mount_setattr(MOUNT_ATTR_RDONLY) failed: {exc}. "
                    "Linux 5.12 or later is needed") from exc


def _build_plan(cfg: dict[str, Any], mode: str, roots: list[str]) -> Plan:
    plan = Plan(
        mode=mode,
        app_dir=cfg["app_dir"],
        module=cfg["module"],
        attribute=cfg["attribute"],
        memory_mb=cfg["memory_mb"],
        cpu_s=cfg["cpu_s"],
        tmp_mb=cfg["tmp_mb"],
        max_open_files=cfg["max_open_files"],
        max_threads=cfg["max_threads"],
        max_message_bytes=cfg["max_message_bytes"],
        env=dict(cfg["env"]),
    )
    if mode == MODE_NONE:
        plan.pidns_per_child = False  # no confinement at all in this mode
        return plan
    from trapeze.sandbox import seccomp_filter
    from trapeze.sandbox.confine import landlock_rules

    try:
        plan.landlock_abi = sc.landlock_abi_version()
    except OSError as exc:
        raise Fatal("landlock", f"Landlock is unavailable ({exc})") from exc
    plan.rules = landlock_rules(roots, list(cfg["executables"]), plan.landlock_abi)
    try:
        plan.seccomp = sc.SeccompProgram(seccomp_filter.build_filter(bool(cfg["executables"])))
    except Exception as exc:
        raise Fatal("seccomp", f"cannot compile the seccomp filter: {exc}") from exc
    plan.rlimits = plan_rlimits(plan)
    # Every child is the init of its own PID namespace, executables or not. Threads take
    # ids from the counter of their namespace: in a namespace children share, a high
    # invocation's threads advanced the counter the next child read back from its own
    # thread's id (review, session 6: tests/attacks/test_review_shared_counters.py). The
    # namespace costs ~0.12 ms of CPU per child here (create at fork, tear down at exit),
    # off the invocation path.
    plan.pidns_per_child = True
    if mode == MODE_ROOT:
        plan.hide_uid = _unprivileged_userns_works(cfg["uid_base"])
    return plan


def _unprivileged_userns_works(uid: int) -> bool:
    """Whether a process running as a slot uid may create a user namespace (a sysctl or an
    AppArmor policy may forbid it): asked once, of a throwaway child. Where it may not,
    children show their slot uid, a residual documented in docs/security-model.md."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            sc.unshare(sc.CLONE_NEWUSER)
        except BaseException:
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    ok = os.waitstatus_to_exitcode(status) == 0
    if not ok:
        print("trapeze zygote: unprivileged user namespaces are unavailable; children show "
              "their slot uid (docs/security-model.md, Slots)", file=sys.stderr)
    return ok


def _child(plan: Plan, slot: Slot, chan_fd: int, log_fd: int, modules: AppModules) -> None:
    """Runs in the forked child; never returns."""
    try:
        confine(plan, slot, chan_fd, log_fd)
        # From here on, nothing in this process is trusted.
        from trapeze.guest import _runtime

        chan = _runtime.install(3, plan.max_message_bytes)
        modules.install_finder()
        import_error: BaseException | None = None
        module: Any = None
        try:
            module = importlib.import_module(plan.module)
        except BaseException as exc:
            import_error = exc

        def load() -> Any:
            fn = getattr(module, plan.attribute)
            if not callable(fn):
                raise TypeError(f"{plan.module}:{plan.attribute} is not callable")
            return fn

        _runtime.warm_up(chan)
        _runtime.serve_one(chan, load, import_error)
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(0)


def main() -> None:
    ctrl = socket.socket(fileno=int(sys.argv[1]))
    ctrl.set_inheritable(False)
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
    cfg = msgpack.unpackb(ctrl.recv(CONTROL_MAX), raw=False)
    try:
        roots = _read_roots(cfg["app_dir"])
        mode = MODE_NONE if cfg["unconfined"] else _enter_namespaces(cfg, roots)
        import trapeze.guest  # noqa: F401  - the guest runtime, ahead of every child
        import trapeze.guest.context  # noqa: F401

        for name in cfg["preload"]:
            importlib.import_module(name)
        plan = _build_plan(cfg, mode, roots)
        if mode != MODE_NONE:
            _cover_private_dirs(cfg, plan)
            _make_view_readonly()
        prepare_process(plan)
        modules = AppModules.compile(plan.app_dir)
        modules.preload()
        # Each live slot holds two descriptors (namespace, ruleset).
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        self_pidns = base_mntns = -1
        if mode != MODE_NONE:
            # setns() back to our own PID namespace before each unshare(CLONE_NEWPID): the
            # kernel only allows a new child namespace while pid_for_children is the active one.
            self_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
            base_mntns = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        threads = _thread_count()
        if threads != 1:
            raise Fatal("single-threaded zygote", f"{threads} threads after preload")
    except Fatal as exc:
        _send(ctrl, {"t": "fatal", "mechanism": exc.mechanism, "error": str(exc)})
        sys.exit(1)
    except Exception as exc:
        _send(ctrl, {"t": "fatal", "mechanism": "zygote", "error": f"{type(exc).__name__}: {exc}"})
        sys.exit(1)
    # Move everything imported so far out of the collector's reach: a collection in a child
    # would otherwise write to (and so copy) every page of the zygote's heap.
    gc.collect()
    gc.freeze()
    _send(ctrl, {"t": "hello", "mode": mode, "landlock_abi": plan.landlock_abi,
                 "pid": os.getpid(), "pidns_per_child": plan.pidns_per_child,
                 "hide_uid": plan.hide_uid})

    uid_base: int = cfg["uid_base"]
    # The next child gets a free slot (its uid) drawn at random: "the slot that freed last"
    # would tell it in which order earlier children ended, and "the lowest free slot" how
    # many invocations ran before it (with a pool of two in slots 0 and 1, each invocation
    # swapped which slot the next child came from: review, session 6,
    # tests/attacks/test_review_shared_counters.py). At random, a child's uid tells it only
    # which slots were busy when it was forked, a fact of concurrency.
    free_slots = list(range(cfg["max_slots"]))
    slots: dict[int, Slot] = {}  # index -> prepared slot (namespace, ruleset)
    # pidfd -> (slot, replace when it exits). Nothing else of a child is kept (module doc 6).
    children: dict[int, tuple[int, bool]] = {}
    # Children to fork: pool children (replaced when they exit) and one-off extras.
    pool_pending = extras_pending = 0
    pool = 0
    sel = selectors.DefaultSelector()
    sel.register(ctrl, selectors.EVENT_READ)

    def get_slot(index: int) -> Slot:
        slot = slots.get(index)
        if slot is None:
            slot = make_slot(plan, index, uid_base + index, base_mntns)
            slots[index] = slot
        return slot

    while True:
        # One fork per turn, then the control socket: a cancel must reach the extras still
        # pending before they are all forked.
        if (pool_pending or extras_pending) and free_slots:
            # Extras first: a caller is waiting for each.
            replace = not extras_pending
            if replace:
                pool_pending -= 1
            else:
                extras_pending -= 1
            pick = secrets.randbelow(len(free_slots))
            free_slots[pick], free_slots[-1] = free_slots[-1], free_slots[pick]
            index = free_slots.pop()
            if mode == MODE_NONE:
                slot = Slot(index, uid_base + index)
            else:
                slot = get_slot(index)
            # At random, not counted: a count would tell each child how many ran before it.
            cid = int.from_bytes(os.urandom(6), "big")
            parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            log_r, log_w = os.pipe2(os.O_CLOEXEC)
            if plan.pidns_per_child:
                sc.setns(self_pidns, sc.CLONE_NEWPID)
                sc.unshare(sc.CLONE_NEWPID)
            pid = sc.fork_bare()  # single-threaded: checked at start-up
            if pid == 0:
                _child(plan, slot, child_end.fileno(), log_w, modules)
            pidfd = os.pidfd_open(pid)
            # As the init of our own PID namespace (user-namespace mode), tell the monitor the
            # pid its namespace gives the child (read here, off the invocation path).
            shown = (sc.pidfd_host_pid(pidfd) or pid) if mode == MODE_USERNS else pid
            _send(ctrl, {"t": "ready", "cid": cid, "pid": shown, "extra": not replace},
                  [parent_end.fileno(), log_r, pidfd])
            parent_end.close()
            child_end.close()
            os.close(log_r)
            os.close(log_w)
            children[pidfd] = (index, replace)
            sel.register(pidfd, selectors.EVENT_READ)
        more = (pool_pending or extras_pending) and free_slots
        for key, _ in sel.select(0 if more else None):
            if key.fileobj is ctrl:
                try:
                    data = ctrl.recv(CONTROL_MAX)
                except ConnectionError:
                    data = b""
                if not data:  # the monitor is gone or closed us: children die with us
                    os._exit(0)
                msg = msgpack.unpackb(data, raw=False)
                op = msg.get("op")
                if op == "pool":
                    # Grow to the new pool size now; shrink as pool children exit.
                    grow = int(msg["n"]) - pool
                    pool = int(msg["n"])
                    pool_pending += max(0, grow)
                elif op == "spawn":
                    extras_pending += int(msg["n"])
                elif op == "cancel":
                    # Drop up to n extras not forked yet (pool children stay).
                    to_drop = int(msg["n"])
                    dropped = min(to_drop, extras_pending)
                    extras_pending -= dropped
                    _send(ctrl, {"t": "cancelled", "asked": to_drop, "dropped": dropped})
                continue
            # A child has exited (every process of it: its threads with it; with a PID
            # namespace, the kernel killed the rest when its init died). Nothing of how.
            pidfd = key.fd
            sel.unregister(pidfd)
            sc.reap(pidfd)  # no status, no rusage (module doc 6)
            os.close(pidfd)
            index, replace = children.pop(pidfd)
            if mode != MODE_NONE:
                # A fresh namespace and tmpfs for the slot's next child, whatever this one did.
                close_slot(slots.pop(index))
            free_slots.append(index)
            # Replace a pool child after its invocation (not while it runs), unless the
            # pool has shrunk since.
            if replace and pool > sum(c[1] for c in children.values()) + pool_pending:
                pool_pending += 1


def _thread_count() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 1


if __name__ == "__main__":
    main()
