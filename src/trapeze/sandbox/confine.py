"""How a child confines itself, and the plan the zygote prepares for it once.

Trusted code. The zygote builds a `Plan` before it forks anything (paths resolved and
checked, seccomp compiled to BPF, Landlock rights computed for the running ABI); a child
applies it in `confine()` right after fork, while nothing untrusted has run in it yet.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
import tempfile  # imported here, in the zygote, not in every child
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
    "/sys/devices/system/cpu",
    "/dev/urandom",
    "/dev/random",
)
DEVICE_RW_PATHS = ("/dev/null", "/dev/zero")


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


def _set_rlimit(res: int, value: int) -> None:
    soft, hard = resource.getrlimit(res)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(res, (value, value))


def confine(plan: Plan, slot_uid: int, chan_fd: int, log_fd: int) -> None:
    """Turn the freshly forked child into a confined one. Exits the process on failure.

    On return: fd 0 is /dev/null, 1 and 2 the log pipe, 3 the channel; nothing else is open;
    /tmp is a private tmpfs; the uid, rlimits, Landlock domain and seccomp filter are set.
    """
    try:
        _confine(plan, slot_uid, chan_fd, log_fd)
    except BaseException as exc:  # a half-confined child must never run function code
        try:
            os.write(2, f"trapeze: confinement failed: {type(exc).__name__}: {exc}\n".encode())
        finally:
            os._exit(70)


def _confine(plan: Plan, slot_uid: int, chan_fd: int, log_fd: int) -> None:
    # Its own session: a terminal or the zygote's process group never reaches it.
    os.setsid()
    # Descriptors: exactly stdin (/dev/null), stdout/stderr (log pipe), 3 (channel).
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.dup2(chan_fd, 3)
    os.set_inheritable(3, False)
    os.closerange(4, 1 << 20)  # close_range(): the zygote's control socket, pidfds, ...
    if plan.mode == MODE_NONE:
        _finish_environment(plan, "/tmp")
        return

    # A private /tmp: a fresh size-limited tmpfs in a mount namespace of its own, so it is
    # invisible to siblings and vanishes, whole, with the last process of the invocation.
    sc.unshare(sc.CLONE_NEWNS)
    # Readable paths under /tmp (an app dir made by a test, a venv) would vanish under the
    # new tmpfs: hold them by descriptor and bind them back, read-only, at the same path.
    under_tmp = [p for p, _ in plan.rules if p.startswith("/tmp/")]
    held = [(p, os.open(p, os.O_PATH | os.O_CLOEXEC)) for p in under_tmp]
    tmp_opts = f"size={plan.tmp_mb}m,nr_inodes=4096,mode=0700"
    if plan.mode == MODE_ROOT:
        tmp_opts += f",uid={slot_uid},gid={slot_uid}"
    sc.mount("tmpfs", "/tmp", "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, tmp_opts)
    for path, fd in held:
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            os.makedirs(path, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
        sc.mount(f"/proc/self/fd/{fd}", path, None, sc.MS_BIND | sc.MS_REC, None)
        sc.mount(None, path, None,
                 sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV, None)
        os.close(fd)

    # Landlock ruleset (built here because a ruleset is a shared kernel object: rules a
    # child added to a zygote-held ruleset would accumulate across all children).
    abi = plan.landlock_abi
    fs_all = fs_rights_for_abi(abi)
    net = (sc.NET_BIND_TCP | sc.NET_CONNECT_TCP) if abi >= 4 else 0
    scoped = (sc.SCOPE_ABSTRACT_UNIX_SOCKET | sc.SCOPE_SIGNAL) if abi >= 6 else 0
    ruleset = sc.landlock_create_ruleset(fs_all, net, scoped, abi)
    for path, rights in plan.rules:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        try:
            sc.landlock_add_path_rule(ruleset, fd, rights)
        finally:
            os.close(fd)
    tmp_fd = os.open("/tmp", os.O_PATH | os.O_CLOEXEC | os.O_DIRECTORY)
    sc.landlock_add_path_rule(ruleset, tmp_fd, fs_all)
    os.close(tmp_fd)

    # rlimits before dropping privileges (hard limits can only go down afterwards).
    _set_rlimit(resource.RLIMIT_AS, plan.memory_mb * 1024 * 1024)
    resource.setrlimit(resource.RLIMIT_CPU, (plan.cpu_s, plan.cpu_s + 1))
    _set_rlimit(resource.RLIMIT_FSIZE, plan.tmp_mb * 1024 * 1024)
    _set_rlimit(resource.RLIMIT_NOFILE, plan.max_open_files)
    _set_rlimit(resource.RLIMIT_CORE, 0)
    _set_rlimit(resource.RLIMIT_MEMLOCK, 0)
    _set_rlimit(resource.RLIMIT_MSGQUEUE, 0)

    if plan.mode == MODE_ROOT:
        # RLIMIT_NPROC is ignored for uid 0 and counts per uid: a per-slot uid makes it real.
        _set_rlimit(resource.RLIMIT_NPROC, plan.max_threads)
        os.setgroups([])
        os.setresgid(slot_uid, slot_uid, slot_uid)
        os.setresuid(slot_uid, slot_uid, slot_uid)  # clears every capability
    else:
        # Root of the zygote's user namespace: shed the namespace capabilities (mount,
        # net admin on the empty netns...). no_new_privs keeps exec from regaining them.
        _set_rlimit(resource.RLIMIT_NPROC, plan.max_threads + 1024)
        sc.drop_all_capabilities()

    # After the uid change, which clears it.
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
    sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
    # Not dumpable: /proc/<pid> files become root-owned, no ptrace attach by the same uid.
    sc.prctl(sc.PR_SET_DUMPABLE, 0)
    sc.landlock_restrict_self(ruleset)
    os.close(ruleset)
    assert plan.seccomp is not None
    plan.seccomp.load()
    _finish_environment(plan, "/tmp")


def _finish_environment(plan: Plan, tmp: str) -> None:
    os.environ.clear()
    os.environ.update(plan.env)  # exactly the manifest's variables, nothing inherited
    os.chdir(plan.app_dir)
    # Not via TMPDIR: the environment must hold only the manifest's variables.
    tempfile.tempdir = tmp
    if plan.app_dir not in sys.path:
        sys.path.insert(0, plan.app_dir)
    # numpy's legacy global generator was seeded in the zygote: every child would draw the
    # same numbers. (random reseeds itself at fork.)
    np_random = sys.modules.get("numpy.random")
    if np_random is not None:
        np_random.seed()


__all__ = ["Plan", "confine", "landlock_rules"]
