"""How a child confines itself, and what the zygote prepares for it once.

Trusted code. The zygote builds a `Plan` before it forks anything (paths resolved and
checked, seccomp compiled to BPF, Landlock rights computed for the running ABI, rlimits
computed) and, per slot, a `Slot` (a mount namespace whose /tmp is the slot's own tmpfs, and
a Landlock ruleset granting exactly that tmp). A child applies both in `confine()` right
after fork, while nothing untrusted has run in it yet: a handful of syscalls, no path
resolution, no ruleset building, no mount.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
from dataclasses import dataclass, field

from trapeze.sandbox import syscalls as sc

MODE_ROOT = "root"  # zygote is real root: children drop to a per-slot uid
MODE_USERNS = "userns"  # zygote is root of its own user namespace: children drop all caps
MODE_NONE = "unconfined"  # development only: no confinement at all

READ = sc.FS_READ_FILE | sc.FS_READ_DIR
# Paths outside the interpreter and the app that CPython, glibc and common libraries read.
SYSTEM_READ_PATHS = (
    "/usr",
    "/lib",
    "/lib64",
    "/bin",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/mime.types",
    # glibc's CPU counts (os.cpu_count()): these files only, not the folder, whose cpuidle
    # and cpufreq statistics count what every process on the machine did.
    "/sys/devices/system/cpu/online",
    "/sys/devices/system/cpu/possible",
    "/sys/devices/system/cpu/present",
    "/dev/urandom",
    "/dev/random",
)
DEVICE_RW_PATHS = ("/dev/null", "/dev/zero")
# Covered with an empty tmpfs in every child's view: Landlock refuses reading them, but not
# stat(), and the sizes and times of other processes' shared-memory segments are not for a
# function to watch.
COVERED_SYSTEM_DIRS = ("/dev/shm", "/dev/mqueue")


class PrivateDirExposed(ValueError):
    pass


def path_within(path: str, root: str) -> bool:
    """`path` is `root` or lies below it (textually: resolve both first)."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def private_dir_covers(private_dirs: list[str], readable: list[str]) -> list[str]:
    """Which of the monitor's own directories (its store's, the app's data_dir) the zygote
    must cover with an empty tmpfs so that no child reads or stats what is in them.

    A directory inside something children may read (the default store lives in
    ``<app>/.trapeze``, and the app directory is readable) would hand every function the
    raw store, every label's facets included; one elsewhere still shows its files' sizes and
    times to stat(), which Landlock does not restrict. Each is covered, unless covering it
    would also hide something children must read (the store file placed directly in the app
    directory): that configuration is refused — except for a directory under /tmp that
    merely contains readable paths: the child's /tmp is private, and only the readable
    paths are bound back into it, not what lies beside them.
    """
    out: list[str] = []
    for d in private_dirs:
        real = os.path.realpath(d)
        if not os.path.isdir(real):
            continue
        held = [r for r in readable if path_within(r, real)]
        if held:
            readable_itself = any(path_within(real, r) for r in readable)
            if path_within(real, "/tmp") and not readable_itself:
                continue
            raise PrivateDirExposed(
                f"the store's directory {d} contains {held[0]}, which confined functions "
                "read, so they would see the store's files too. Put the store in a directory "
                "of its own, outside the app and the Python installation (the default is "
                "<app>/.trapeze/)"
            )
        out.append(real)
    return out


def fs_rights_for_abi(abi: int) -> int:
    rights = (1 << 13) - 1  # EXECUTE .. MAKE_SYM: ABI 1
    if abi >= 2:
        rights |= sc.FS_REFER
    if abi >= 3:
        rights |= sc.FS_TRUNCATE
    if abi >= 5:
        rights |= sc.FS_IOCTL_DEV
    return rights


@dataclass
class Plan:
    mode: str
    app_dir: str
    module: str
    attribute: str
    memory_mb: int
    cpu_s: int
    tmp_mb: int
    max_open_files: int
    max_threads: int
    max_message_bytes: int
    env: dict[str, str]
    landlock_abi: int = 0
    seccomp: sc.SeccompProgram | None = None
    # (path, rights) pairs, resolved and checked to exist by the zygote.
    rules: list[tuple[str, int]] = field(default_factory=list)
    # (resource, (soft, hard)) computed by the zygote against its own hard limits.
    rlimits: list[tuple[int, tuple[int, int]]] = field(default_factory=list)
    # A new PID namespace per child: needed when the child may create processes (see
    # zygote.py), or where Landlock cannot scope signals.
    pidns_per_child: bool = True
    # As root: each child enters a user namespace of its own that maps no uid, so that it
    # sees itself (and its files) as the overflow uid, not its slot's uid (zygote.py).
    hide_uid: bool = False


@dataclass
class Slot:
    """One of the zygote's reusable execution slots; at most one child uses it at a time."""

    index: int
    uid: int
    mntns_fd: int = -1  # the slot's mount namespace (its own tmpfs on /tmp)
    ruleset_fd: int = -1  # Landlock ruleset: the plan's rules + rw on this slot's /tmp


def landlock_rules(plan_paths: list[str], executables: list[str], abi: int) -> list[
    tuple[str, int]
]:
    """Resolve every path the child may read (or run) into (realpath, rights) rules."""
    fs_all = fs_rights_for_abi(abi)
    rules: dict[str, int] = {}

    def add(path: str, rights: int) -> None:
        try:
            real = os.path.realpath(path)
            os.stat(real)
        except OSError:
            return  # absent on this system: nothing to grant
        if not os.path.isdir(real):
            rights &= sc.FS_FILE_RIGHTS
        rules[real] = rules.get(real, 0) | (rights & fs_all)

    for p in plan_paths:
        add(p, READ)
    for p in SYSTEM_READ_PATHS:
        add(p, READ)
    for p in DEVICE_RW_PATHS:
        add(p, sc.FS_READ_FILE | sc.FS_WRITE_FILE)
    for exe in executables:
        add(exe, sc.FS_READ_FILE | sc.FS_EXECUTE)
        # The kernel opens a dynamic executable's loader for execution too. Granting it means
        # `ld.so /bin/sh` would run: acceptable, since a function that may exec at all can
        # already run any machine code through ctypes, and it stays under the same seccomp
        # filter, Landlock domain, uid and namespaces (docs/security-model.md).
        interp = elf_interpreter(exe)
        if interp:
            add(interp, sc.FS_READ_FILE | sc.FS_EXECUTE)
    return sorted(rules.items())


def elf_interpreter(path: str) -> str | None:
    """The PT_INTERP path of a 64-bit little-endian ELF executable, if it has one."""
    import struct

    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
                return None
            phoff, = struct.unpack_from("<Q", head, 32)
            phentsize, phnum = struct.unpack_from("<HH", head, 54)
            for i in range(phnum):
                fh.seek(phoff + i * phentsize)
                p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack(
                    "<IIQQQQ", fh.read(40)
                )
                if p_type == 3:  # PT_INTERP
                    fh.seek(p_offset)
                    return fh.read(p_filesz).rstrip(b"\0").decode()
    except (OSError, struct.error, UnicodeDecodeError):
        return None
    return None


def _rlimit(res: int, value: int) -> tuple[int, tuple[int, int]]:
    _soft, hard = resource.getrlimit(res)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    return res, (value, value)


def plan_rlimits(plan: Plan) -> list[tuple[int, tuple[int, int]]]:
    """The child's rlimits, computed once in the zygote (hard limits only go down)."""
    mib = 1024 * 1024
    nproc = plan.max_threads if plan.mode == MODE_ROOT else plan.max_threads + 1024
    return [
        _rlimit(resource.RLIMIT_AS, plan.memory_mb * mib),
        (resource.RLIMIT_CPU, (plan.cpu_s, plan.cpu_s + 1)),
        _rlimit(resource.RLIMIT_FSIZE, plan.tmp_mb * mib),
        _rlimit(resource.RLIMIT_NOFILE, plan.max_open_files),
        _rlimit(resource.RLIMIT_CORE, 0),
        _rlimit(resource.RLIMIT_MEMLOCK, 0),
        _rlimit(resource.RLIMIT_MSGQUEUE, 0),
        # Ignored for uid 0 and counted per uid: a per-slot uid makes it real (as root).
        _rlimit(resource.RLIMIT_NPROC, nproc),
    ]


def make_slot(plan: Plan, index: int, uid: int, base_mntns: int) -> Slot:
    """Zygote side: a fresh mount namespace with a fresh tmpfs on /tmp, and its ruleset.

    The namespace is a copy of the zygote's own (private propagation, the opened-up
    interpreter tree, the empty network namespace is separate and shared). Readable roots that
    lived under /tmp are bound back, read-only, at the same path. The zygote replaces the
    slot's namespace after every child (see zygote.py), so a fresh tmpfs is what every child
    sees.
    """
    slot = Slot(index, uid)
    sc.unshare(sc.CLONE_NEWNS)
    try:
        # Held by descriptor: the tmpfs about to cover /tmp hides them.
        under_tmp = [p for p, _ in plan.rules if p.startswith("/tmp/")]
        held = [(p, os.open(p, os.O_PATH | os.O_CLOEXEC)) for p in under_tmp]
        opts = f"size={plan.tmp_mb}m,nr_inodes=4096,mode=0700"
        if plan.mode == MODE_ROOT:
            opts += f",uid={uid},gid={uid}"
        sc.mount("tmpfs", "/tmp", "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, opts)
        for path, fd in held:
            is_dir = os.path.isdir(f"/proc/self/fd/{fd}")
            parts = path.split("/")[2:]  # below /tmp
            for i in range(1, len(parts)):
                d = "/tmp/" + "/".join(parts[:i])
                if not os.path.isdir(d):
                    os.mkdir(d, 0o755)
            if is_dir:
                os.makedirs(path, exist_ok=True)
            else:
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
        for path, fd in held:
            sc.mount(f"/proc/self/fd/{fd}", path, None, sc.MS_BIND | sc.MS_REC, None)
            sc.mount(None, path, None,
                     sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV, None)
            os.close(fd)
        slot.mntns_fd = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        slot.ruleset_fd = _ruleset(plan)
    finally:
        sc.setns(base_mntns, sc.CLONE_NEWNS)
    return slot


def _ruleset(plan: Plan) -> int:
    """A Landlock ruleset for one slot: the plan's rules plus full rights on its /tmp.

    Built in the slot's mount namespace (the /tmp rule names that tmpfs's root inode). Each
    child of the slot enforces it with landlock_restrict_self(), which makes a new domain per
    child: siblings are in different domains, so signal and abstract-socket scoping separate
    them. The ruleset itself is never changed after this.
    """
    abi = plan.landlock_abi
    fs_all = fs_rights_for_abi(abi)
    net = (sc.NET_BIND_TCP | sc.NET_CONNECT_TCP) if abi >= 4 else 0
    scoped = (sc.SCOPE_ABSTRACT_UNIX_SOCKET | sc.SCOPE_SIGNAL) if abi >= 6 else 0
    ruleset = sc.landlock_create_ruleset(fs_all, net, scoped, abi)
    for path, rights in [*plan.rules, ("/tmp", fs_all)]:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        try:
            sc.landlock_add_path_rule(ruleset, fd, rights)
        finally:
            os.close(fd)
    return ruleset


def close_slot(slot: Slot) -> None:
    for fd in (slot.mntns_fd, slot.ruleset_fd):
        if fd >= 0:
            os.close(fd)
    slot.mntns_fd, slot.ruleset_fd = -1, -1


def confine(plan: Plan, slot: Slot, chan_fd: int, log_fd: int) -> None:
    """Turn the freshly forked child into a confined one. Exits the process on failure.

    On return: fd 0 is /dev/null, 1 and 2 the log pipe, 3 the channel; nothing else is open;
    /tmp is the slot's private tmpfs; the uid, rlimits, Landlock domain and seccomp filter
    are set.
    """
    try:
        _confine(plan, slot, chan_fd, log_fd)
    except BaseException as exc:  # a half-confined child must never run function code
        try:
            os.write(2, f"trapeze: confinement failed: {type(exc).__name__}: {exc}\n".encode())
        finally:
            os._exit(70)


def _confine(plan: Plan, slot: Slot, chan_fd: int, log_fd: int) -> None:
    # Its own session: a terminal or the zygote's process group never reaches it.
    os.setsid()
    # Descriptors: exactly stdin (/dev/null), stdout/stderr (log pipe), 3 (channel).
    # /dev/null opened here, not once by the zygote: children sharing one open file
    # description shared its status flags too, and O_APPEND and O_NONBLOCK set by one
    # invocation (fcntl F_SETFL, ioctl FIONBIO) were read back by the next (review, session
    # 6: tests/attacks/test_review_shared_counters.py). No descriptor a child can change
    # may be shared with another.
    null_fd = os.open("/dev/null", os.O_RDONLY)
    if null_fd != 0:
        os.dup2(null_fd, 0)
        os.close(null_fd)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.dup2(chan_fd, 3)
    os.set_inheritable(3, False)
    if plan.mode != MODE_NONE:
        # The slot's mount namespace: its /tmp is this slot's tmpfs, fresh (the zygote
        # replaces it after any child that touched it). Needs the capabilities dropped below.
        sc.setns(slot.mntns_fd, sc.CLONE_NEWNS)
        # rlimits before dropping privileges (hard limits can only go down afterwards).
        for res, limits in plan.rlimits:
            resource.setrlimit(res, limits)
        if plan.mode == MODE_ROOT:
            os.setgroups([])
            os.setresgid(slot.uid, slot.uid, slot.uid)
            os.setresuid(slot.uid, slot.uid, slot.uid)  # clears every capability
            if plan.hide_uid:
                # A user namespace that maps nothing: getuid(), stat() and the like show the
                # overflow uid (nobody) instead of the slot's, which told a child whether
                # another invocation had run since the last one it saw (a reused slot).
                # The capabilities it brings are over that empty namespace only, and are
                # shed at once.
                sc.unshare(sc.CLONE_NEWUSER)
                sc.drop_all_capabilities()
        else:
            # Root of the zygote's user namespace: shed the namespace capabilities (mount,
            # net admin on the empty netns...). no_new_privs keeps exec from regaining them.
            sc.drop_all_capabilities()
        # After the uid change, which clears it.
        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
        sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
        # Not dumpable: /proc/<pid> files become root-owned, no ptrace attach by the same uid.
        sc.prctl(sc.PR_SET_DUMPABLE, 0)
        sc.landlock_restrict_self(slot.ruleset_fd)
    # close_range(): the zygote's control socket, every slot's namespace and ruleset, ...
    os.closerange(4, 1 << 20)
    if plan.mode != MODE_NONE:
        assert plan.seccomp is not None
        plan.seccomp.load()
    # setns() moved the working directory to the namespace's root.
    os.chdir(plan.app_dir)
    sys.path.insert(0, plan.app_dir)
    reseed_generators()


def reseed_generators() -> None:
    """Global pseudo-random generators were seeded in the zygote: without this every child
    would draw the same numbers. (os.fork() would reseed `random` through its at-fork hook;
    the zygote forks without running hooks, see syscalls.fork_bare.)"""
    for name in ("random", "numpy.random"):
        module = sys.modules.get(name)
        if module is not None:
            module.seed()


def prepare_process(plan: Plan) -> None:
    """Zygote side, once, after its preloads: what every child would otherwise redo.

    The environment becomes exactly the manifest's variables (children inherit it as is),
    and tempfile's directory is /tmp (not via TMPDIR, so that the environment holds only the
    manifest's variables). The app directory is *not* put on the zygote's sys.path: an app
    module shadowing a stdlib name would then run in the zygote on its next lazy import.
    """
    import tempfile

    os.environ.clear()
    os.environ.update(plan.env)
    tempfile.tempdir = "/tmp"
    _answer_memory_size_from_the_limit(plan.memory_mb)


def _answer_memory_size_from_the_limit(memory_mb: int) -> None:
    """os.sysconf("SC_PHYS_PAGES") and "SC_AVPHYS_PAGES" answer the function's memory limit.

    glibc computes them with sysinfo(), which the seccomp filter refuses (its free-memory
    figures move with other invocations' writes), and ignores the error: the answer would be
    whatever was on the stack. The limit is what a container-aware runtime reports anyway.
    C code calling sysconf() itself still gets glibc's nonsense (docs/guest-api.md)."""
    real_sysconf = os.sysconf
    pages = memory_mb * (1 << 20) // os.sysconf("SC_PAGE_SIZE")
    names = {"SC_PHYS_PAGES", "SC_AVPHYS_PAGES"}
    numbers = {os.sysconf_names[n] for n in names if n in os.sysconf_names}

    def sysconf(name: str | int) -> int:
        if name in names or name in numbers:
            return pages
        return real_sysconf(name)

    sysconf.__doc__ = real_sysconf.__doc__
    os.sysconf = sysconf


__all__ = ["COVERED_SYSTEM_DIRS", "Plan", "PrivateDirExposed", "Slot", "close_slot", "confine",
           "landlock_rules", "make_slot", "path_within", "plan_rlimits", "prepare_process",
           "private_dir_covers"]
