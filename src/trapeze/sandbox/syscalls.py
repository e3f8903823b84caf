"""Thin ctypes wrappers for the Linux calls CPython 3.11 does not expose.

Only x86_64 is supported: the syscall numbers below are that ABI's, and the seccomp filter
kills any other ABI. Every wrapper raises OSError with the kernel's errno, so callers can
tell "the mechanism is missing" (ENOSYS, EOPNOTSUPP) from "not permitted" (EPERM).
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct

if platform.machine() != "x86_64":  # pragma: no cover - the numbers below are x86_64's
    raise ImportError("trapeze.sandbox supports x86_64 Linux only")

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

# x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl).
SYS_mount = 165
SYS_umount2 = 166
SYS_unshare = 272
SYS_setns = 308
SYS_seccomp = 317
SYS_pidfd_send_signal = 424
SYS_pidfd_open = 434
SYS_landlock_create_ruleset = 444
SYS_landlock_add_rule = 445
SYS_landlock_restrict_self = 446
SYS_capget = 125
SYS_waitid = 247
SYS_mount_setattr = 442
MOUNT_ATTR_RDONLY = 0x1
AT_RECURSIVE = 0x8000
AT_FDCWD = -100
P_PIDFD = 3
WEXITED = 4
SYS_capset = 126

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_THREAD = 0x00010000
NAMESPACE_FLAGS = (
    CLONE_NEWNS
    | CLONE_NEWCGROUP
    | CLONE_NEWUTS
    | CLONE_NEWIPC
    | CLONE_NEWUSER
    | CLONE_NEWPID
    | CLONE_NEWNET
)

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_MODE_FILTER = 2
SECCOMP_SET_MODE_FILTER = 1


def _check(ret: int) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


# PyDLL keeps the GIL across the call, so the child resumes holding it, as a fork()ed
# thread must.
_fork = ctypes.PyDLL(None, use_errno=True).fork
_fork.restype = ctypes.c_int
_fork.argtypes = ()


def fork_bare() -> int:
    """fork() without CPython's at-fork machinery (PyOS_BeforeFork/AfterFork_*).

    os.fork() re-initialises the runtime's locks and thread states and runs every
    registered at-fork hook in the child; all of that exists for processes that had other
    threads at fork time, and on this class of machine its page faults cost the child about
    a millisecond of CPU. The zygote is single-threaded by construction (it checks), so none
    of it is needed there. What the hooks would have done that still matters - reseeding
    `random` - the child does itself (confine.reseed_generators). Never call this from a
    process that may have another thread.
    """
    return _check(_fork())


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def make_tree_readonly(path: str) -> None:
    """mount_setattr(path, AT_RECURSIVE, MOUNT_ATTR_RDONLY): every mount at or below `path`
    in this mount namespace becomes read-only (Linux >= 5.12)."""
    attr = _MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
    _check(_syscall(SYS_mount_setattr, ctypes.c_int(AT_FDCWD), os.fsencode(path),
                    ctypes.c_uint(AT_RECURSIVE), ctypes.byref(attr),
                    ctypes.c_size_t(ctypes.sizeof(attr))))


def reap(pidfd: int) -> None:
    """Reap the exited child behind `pidfd` and learn nothing of it: waitid() with no
    siginfo and no rusage, so its exit status and resource use never enter this process's
    memory (its CPU time is still added to ours as a child's, for accounting)."""
    _check(_syscall(SYS_waitid, ctypes.c_int(P_PIDFD), ctypes.c_int(pidfd), None,
                    ctypes.c_int(WEXITED), None))


def unshare(flags: int) -> None:
    _check(_syscall(SYS_unshare, ctypes.c_int(flags)))


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None
          ) -> None:
    def enc(s: str | None) -> bytes | None:
        return None if s is None else os.fsencode(s)

    _check(
        _syscall(
            SYS_mount,
            enc(source),
            enc(target),
            enc(fstype),
            ctypes.c_ulong(flags),
            enc(data),
        )
    )


def umount2(target: str, flags: int = 0) -> None:
    _check(_syscall(SYS_umount2, os.fsencode(target), ctypes.c_int(flags)))


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    _libc.prctl.restype = ctypes.c_int
    return _check(
        _libc.prctl(
            ctypes.c_int(option),
            ctypes.c_ulong(arg2),
            ctypes.c_ulong(arg3),
            ctypes.c_ulong(arg4),
            ctypes.c_ulong(arg5),
        )
    )


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


class SeccompProgram:
    """A raw classic-BPF program (as exported by libseccomp), laid out for the kernel.

    Built once in the zygote so that a child's only cost is the seccomp() call itself.
    """

    def __init__(self, program: bytes) -> None:
        if not program or len(program) % 8:
            raise ValueError("BPF program length is not a positive multiple of 8")
        count = len(program) // 8
        self._buf = (_SockFilter * count).from_buffer_copy(program)
        self._prog = _SockFprog(count, ctypes.cast(self._buf, ctypes.POINTER(_SockFilter)))
        self._ref = ctypes.byref(self._prog)

    def load(self) -> None:
        """Install on the calling thread. The caller must be single-threaded (other threads
        would stay unfiltered) and must have set no_new_privs."""
        _check(_syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, self._ref))


def pidfd_send_signal(pidfd: int, sig: int) -> None:
    _check(_syscall(SYS_pidfd_send_signal, pidfd, sig, None, 0))


def pidfd_host_pid(pidfd: int) -> int | None:
    """The pid of the process behind `pidfd` in the PID namespace of the /proc we see (the
    host's, for a process that made itself the init of a new PID namespace but kept /proc)."""
    try:
        with open(f"/proc/self/fdinfo/{pidfd}") as fh:
            for line in fh:
                if line.startswith("Pid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


# PIDFD_GET_INFO (Linux 6.15): struct pidfd_info, version 0 (64 bytes); exit_code at byte 60.
_PIDFD_INFO_SIZE = 64
PIDFD_GET_INFO = (3 << 30) | (_PIDFD_INFO_SIZE << 16) | (0xFF << 8) | 11
_PIDFD_INFO_EXIT = 1 << 3


def pidfd_exit_status(pidfd: int) -> int | None:
    """The wait status of the exited process behind `pidfd` (whoever reaped it), from the
    kernel's pidfd information; None while it runs, or where the kernel keeps none (< 6.15)."""
    import fcntl

    buf = bytearray(struct.pack("<Q", _PIDFD_INFO_EXIT) + bytes(_PIDFD_INFO_SIZE - 8))
    try:
        fcntl.ioctl(pidfd, PIDFD_GET_INFO, buf)
    except OSError:
        return None
    (mask,) = struct.unpack_from("<Q", buf, 0)
    if not mask & _PIDFD_INFO_EXIT:
        return None
    (status,) = struct.unpack_from("<i", buf, 60)
    return status


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def drop_all_capabilities() -> None:
    """Empty the effective, permitted and inheritable sets of the calling thread."""
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3: two 32-bit words
    data = (_CapData * 2)()
    _check(_syscall(SYS_capset, ctypes.byref(header), ctypes.byref(data)))


# --- Landlock ------------------------------------------------------------------------------

LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
LANDLOCK_RULE_NET_PORT = 2

FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6

# Rights that may be granted on a regular file (the kernel rejects the others there).
FS_FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi_version() -> int:
    """The kernel's Landlock ABI version; OSError(ENOSYS/EOPNOTSUPP) when unavailable."""
    return _check(
        _syscall(SYS_landlock_create_ruleset, None, 0, LANDLOCK_CREATE_RULESET_VERSION)
    )


def landlock_create_ruleset(fs: int, net: int, scoped: int, abi: int) -> int:
    attr = _RulesetAttr(fs, net, scoped)
    # Older kernels reject a struct larger than they know with E2BIG: pass only the prefix
    # that the running ABI understands.
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    return _check(_syscall(SYS_landlock_create_ruleset, ctypes.byref(attr), size, 0))


def landlock_add_path_rule(ruleset_fd: int, path_fd: int, access: int) -> None:
    attr = _PathBeneathAttr(access, path_fd)
    _check(
        _syscall(
            SYS_landlock_add_rule, ruleset_fd, LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(attr), 0
        )
    )


def landlock_restrict_self(ruleset_fd: int) -> None:
    _check(_syscall(SYS_landlock_restrict_self, ruleset_fd, 0))


def setns(fd: int, nstype: int) -> None:
    _check(_syscall(SYS_setns, fd, nstype))
