"""The seccomp-bpf allowlist of a confined child, compiled once per zygote.

libseccomp compiles the rules (in the zygote, where the 1-2 ms cost is paid once); each
child only installs the exported raw BPF with the seccomp() syscall (~0.3 ms, measured).

Policy:
- default: the call fails with EPERM, so ordinary code that probes a syscall gets a Python
  PermissionError it can handle, and an attack gets a precise, testable errno;
- clone3 fails with ENOSYS, so glibc falls back to clone(), whose flags we *can* inspect
  (clone3 passes them in memory that BPF cannot read);
- any non-native ABI (the i386 `int 0x80` entry, x32) kills the whole process: otherwise
  those syscall numbers would bypass every rule below;
- clone() is allowed for threads only, or for processes as well when the function declares
  executables; never with namespace flags;
- the rules are laid out as a binary tree (libseccomp's CTL_OPTIMIZE=2): the kernel runs
  the filter for every syscall number when it is attached (to fill its per-syscall action
  cache), so a short search path halves the per-child load cost (~0.5 -> ~0.25 ms here);
- open/openat with O_TMPFILE are refused (EPERM; tempfile falls back to a named file), and
  openat2 (flags in memory BPF cannot read) returns ENOSYS. They once kept a slot's tmpfs
  free of unnamed inodes the zygote could not see; every child now gets a fresh tmpfs, and
  the rules stay because nothing needs the calls and fewer allowed paths are fewer to review;
- without declared executables, kill() only with a pid >= 0: the child is alone in its
  process group, so a negative pid could only aim at others (Landlock scoping and the
  per-slot uid refuse those too; this makes kill(-1) fail loudly instead of returning 0);
- socketpair() only for AF_UNIX stream and seqpacket pairs, sendto() only without a
  destination address: a datagram socket would reach any pathname socket on the host;
- no file locks (flock, fcntl's locks and leases), no change of a file's mode, times or
  attributes (chmod, utime families, ioctl FS_IOC_SETFLAGS), and only a few fcntl commands
  and ioctl requests: locks on a shared read-only file signal between concurrent
  invocations, and metadata of a file the child owns (in the user-namespace mode, the
  deploying user's files) is state Landlock does not govern. See _ALLOWED;
- getsockopt/setsockopt only for a short list of SOL_SOCKET options, and clone() never with
  CLONE_PIDFD: socket cookies and pidfd inode numbers are machine-wide counters one
  invocation could advance and a later one read (review, session 6);
- the page cache of files every child may read (the app's, the interpreter's) is shared
  state: preadv2() with RWF_NOWAIT answers EOPNOTSUPP (the kernel's "not supported for
  this file", on which callers fall back to a plain read) instead of telling whether a page
  is cached, mincore() is refused, and advice that evicts pages (fadvise DONTNEED, madvise
  COLD/PAGEOUT) or merges or collapses them is accepted and ignored (advice may be). Before
  this, one invocation evicted or loaded a file's pages and another, at any label, read the
  bits back with RWF_NOWAIT, as often as it liked (review, session 6). What remains, loading
  a page once and having a later invocation notice it is cached by timing its read or by
  counting its own major page faults, is a one-shot resource channel, out of scope with
  timing (docs/security-model.md).
"""

from __future__ import annotations

import errno
import tempfile

from trapeze.sandbox import syscalls

# Syscalls CPython, glibc, threads, numpy and the guest runtime need. Reading and writing
# existing descriptors is fine: the child holds only its own socket, pipe and files (but a
# file may be shared with other invocations: locks and metadata are not, see below).
_ALLOWED = (
    # files and descriptors (Landlock decides which paths)
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev",
    "pwritev2", "lseek", "close", "close_range", "fstat", "newfstatat", "stat",
    "lstat", "access", "faccessat", "faccessat2", "readlink", "readlinkat",
    "getdents64", "getcwd", "chdir", "fchdir", "creat",
    "mkdir", "mkdirat", "rmdir", "unlink", "unlinkat", "rename", "renameat", "renameat2",
    "link", "linkat", "symlink", "symlinkat", "truncate",
    "ftruncate", "fallocate", "fsync", "fdatasync", "dup",
    "dup2", "dup3", "pipe", "pipe2",
    "copy_file_range", "sendfile", "getxattr", "lgetxattr", "fgetxattr", "listxattr",
    "llistxattr", "flistxattr", "umask",
    # memory
    "mmap", "munmap", "mprotect", "mremap", "brk", "msync",
    "get_mempolicy", "membarrier",
    # signals (Landlock scoping, the slot uid and, with executables, the PID namespace bound
    # whom they reach; kill() has its own rule below)
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending", "rt_sigtimedwait",
    "rt_sigsuspend", "sigaltstack", "tgkill", "tkill", "pause", "alarm",
    "setitimer", "getitimer", "timer_create", "timer_settime", "timer_gettime",
    "timer_delete", "timer_getoverrun", "restart_syscall",
    # time and scheduling
    "clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep", "gettimeofday", "time",
    "sched_yield", "sched_getaffinity", "sched_getparam", "sched_getscheduler",
    "sched_get_priority_max", "sched_get_priority_min", "getcpu",
    # threads
    "futex", "set_robust_list", "rseq", "set_tid_address", "arch_prctl", "exit",
    "exit_group", "wait4", "waitid",
    # identity and limits (read-only, or lowering only: no capabilities are left)
    "getpid", "gettid", "getppid", "getuid", "geteuid", "getgid", "getegid", "getresuid",
    "getresgid", "getgroups", "getpgid", "getpgrp", "getsid", "getrlimit", "setrlimit",
    "getrusage", "times", "uname", "getrandom", "getpriority",
    # waiting on descriptors
    "select", "pselect6", "poll", "ppoll", "epoll_create", "epoll_create1", "epoll_ctl",
    "epoll_wait", "epoll_pwait", "epoll_pwait2", "eventfd", "eventfd2", "timerfd_create",
    "timerfd_settime", "timerfd_gettime", "signalfd4",
    # the inherited channel to the monitor and socketpairs: connected stream or seqpacket
    # sockets only (no socket(), connect(), bind(); socketpair and sendto have rules below)
    "recvfrom", "sendmsg", "recvmsg", "shutdown", "getsockname", "getpeername",
)
# Denied by omission (EPERM), and worth naming: sysinfo, whose free-memory and page-cache
# figures move with other invocations' writes and its process count with their threads
# (glibc's sysconf(_SC_PHYS_PAGES) ignores the error; os.sysconf is answered from the
# memory limit, see confine.py). chmod, fchmod, fchmodat, fchmodat2, utime,
# utimes, utimensat, futimesat and the chown family change the metadata of a file the child
# owns -- in the user-namespace mode, every file of the deploying user it can reach, app
# files included, which Landlock does not govern: state that would outlive the invocation
# and be read by the next one, at any label. flock, and fcntl's record locks, leases and
# notifications (see _FCNTL_COMMANDS), on a file every child can open would let two
# concurrent invocations signal each other across labels.

# fcntl commands on the child's own descriptors: descriptor flags, status flags (O_NONBLOCK,
# O_APPEND), duplication, reading seals. Not F_SETLK/F_SETLKW/F_GETLK and their F_OFD_
# forms, F_SETLEASE/F_GETLEASE, F_NOTIFY, F_SETOWN*/F_SETSIG (signals to others),
# F_SETPIPE_SZ (growing the log pipe): EPERM.
_FCNTL_COMMANDS = (
    0,  # F_DUPFD
    1,  # F_GETFD
    2,  # F_SETFD
    3,  # F_GETFL
    4,  # F_SETFL
    1030,  # F_DUPFD_CLOEXEC
    1034,  # F_GET_SEALS
)

# ioctl requests: what CPython and glibc issue on their own. Every other request -- among
# them FS_IOC_SETFLAGS/FS_IOC_FSSETXATTR (file attributes, which Landlock does not govern
# either), FICLONE, terminal and socket configuration -- fails with EPERM.
_IOCTL_COMMANDS = (
    0x5401,  # TCGETS: isatty(), tcgetattr()
    0x5413,  # TIOCGWINSZ: os.get_terminal_size()
    0x541B,  # FIONREAD: bytes waiting on a pipe or socket
    0x5421,  # FIONBIO: socket.setblocking()
    0x5450,  # FIONCLEX: os.set_inheritable(fd, True)
    0x5451,  # FIOCLEX: os.set_inheritable(fd, False)
)

# madvise advice that concerns only the caller's own mappings. MADV_COLD and MADV_PAGEOUT
# (which evict the shared page cache of a file mapping), MADV_MERGEABLE (KSM: merged pages
# are shared with other processes) and MADV_COLLAPSE (builds huge pages in a file's page
# cache) are accepted and ignored; MADV_HWPOISON and the rest fail with EPERM.
_MADVISE_ADVICE = (
    0,  # MADV_NORMAL
    1,  # MADV_RANDOM
    2,  # MADV_SEQUENTIAL
    3,  # MADV_WILLNEED: loads pages, as reading them does
    4,  # MADV_DONTNEED: drops the caller's own mappings (glibc's free, thread stacks)
    8,  # MADV_FREE
    9,  # MADV_REMOVE: punches a hole in a shared writable mapping (the child's own tmp files)
    10,  # MADV_DONTFORK
    11,  # MADV_DOFORK
    13,  # MADV_UNMERGEABLE
    14,  # MADV_HUGEPAGE (numpy, for large arrays)
    15,  # MADV_NOHUGEPAGE
    16,  # MADV_DONTDUMP
    17,  # MADV_DODUMP
    18,  # MADV_WIPEONFORK
    19,  # MADV_KEEPONFORK
    22,  # MADV_POPULATE_READ
    23,  # MADV_POPULATE_WRITE
    24,  # MADV_DONTNEED_LOCKED
    102,  # MADV_GUARD_INSTALL (newer glibc's thread-stack guards)
    103,  # MADV_GUARD_REMOVE
)
_MADVISE_IGNORED = (12, 20, 21, 25)  # MERGEABLE, COLD, PAGEOUT, COLLAPSE

# posix_fadvise advice: all but POSIX_FADV_DONTNEED (4), which evicts a file's clean pages
# from the page cache every process shares; it is accepted and ignored.
_FADVISE_ADVICE = (0, 1, 2, 3, 5)  # NORMAL, RANDOM, SEQUENTIAL, WILLNEED, NOREUSE
_FADV_DONTNEED = 4
RWF_NOWAIT = 0x8
# statx() mask bits asking for a mount's id: STATX_MNT_ID (the lowest free id, which counts
# the mounts alive now) and STATX_MNT_ID_UNIQUE (a counter of every mount ever made: each
# child's mount namespace adds ~27, so the id of its /tmp told a child how many invocations,
# at any label, had started since it last looked). Nothing else in the reply names a
# mount, and no library we know asks for these.
STATX_MNT_ID_BITS = 0x1000 | 0x4000

# Socket options (level SOL_SOCKET) a unix socket pair needs: what socket.socket(fileno=)
# asks (SO_TYPE, SO_PROTOCOL, SO_DOMAIN), errors, buffer sizes, low-water marks, timeouts.
# Not SO_COOKIE (a machine-wide counter of every cookie handed out: one invocation took N,
# the next read how many), SO_PEERPIDFD and SO_PASSPIDFD (pidfds, whose inode numbers count
# every process and thread created on the machine), SO_PEERCRED and the rest: EPERM.
SOL_SOCKET = 1
_GETSOCKOPT_OPTIONS = (
    3,  # SO_TYPE
    4,  # SO_ERROR
    7,  # SO_SNDBUF
    8,  # SO_RCVBUF
    18,  # SO_RCVLOWAT
    19,  # SO_SNDLOWAT
    20,  # SO_RCVTIMEO_OLD
    21,  # SO_SNDTIMEO_OLD
    30,  # SO_ACCEPTCONN
    38,  # SO_PROTOCOL
    39,  # SO_DOMAIN
    66,  # SO_RCVTIMEO_NEW
    67,  # SO_SNDTIMEO_NEW
)
_SETSOCKOPT_OPTIONS = (7, 8, 18, 19, 20, 21, 66, 67)
# clone() never returns a pidfd (CLONE_PIDFD): see _GETSOCKOPT_OPTIONS.
CLONE_PIDFD = 0x1000

# Only with declared executables.
_PROCESS_CALLS = ("execve", "execveat", "vfork", "fork", "setsid", "setpgid")

# prctl options that only read state or name things; PR_SET_DUMPABLE, PR_SET_PDEATHSIG,
# securebits and the like stay denied.
_PRCTL_OPTIONS = (
    3,  # PR_GET_DUMPABLE
    15,  # PR_SET_NAME (threading names its threads)
    16,  # PR_GET_NAME
    21,  # PR_GET_SECCOMP
    23,  # PR_CAPBSET_READ
    39,  # PR_GET_NO_NEW_PRIVS
    42,  # PR_GET_THP_DISABLE
    0x53564D41,  # PR_SET_VMA: glibc names anonymous mappings
)

AF_UNIX = 1
SOCK_STREAM = 1
SOCK_SEQPACKET = 5
SOCK_FLAGS = 0o4000 | 0o2000000  # SOCK_NONBLOCK | SOCK_CLOEXEC
# int and unsigned int arguments: the kernel reads the low 32 bits of the register only.
LOW32 = 0xFFFFFFFF
O_TMPFILE_BIT = 0o20000000  # __O_TMPFILE (O_TMPFILE is this | O_DIRECTORY)


def build_filter(allow_processes: bool) -> bytes:
    """Compile the allowlist and return it as raw BPF bytes."""
    import pyseccomp as sc

    f = sc.SyscallFilter(sc.ERRNO(errno.EPERM))
    f.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    f.set_attr(sc.Attr.CTL_OPTIMIZE, 2)  # binary tree: see the module docstring
    for name in _ALLOWED:
        f.add_rule(sc.ALLOW, name)
    for opt in _PRCTL_OPTIONS:
        f.add_rule(sc.ALLOW, "prctl", sc.Arg(0, sc.EQ, opt))
    # prlimit64 is how glibc implements getrlimit/setrlimit; only on the caller itself.
    f.add_rule(sc.ALLOW, "prlimit64", sc.Arg(0, sc.EQ, 0))
    # A connected pair of unix stream or seqpacket sockets reaches nothing outside the
    # process (asyncio's self-pipe needs one); socket(), connect(), bind() stay denied.
    # Not SOCK_DGRAM: a datagram socket, connected or not, sends to any pathname socket
    # named in sendto()/sendmsg() (a host's /dev/log, with descriptors attached). A
    # stream socket refuses a destination address (EISCONN/EOPNOTSUPP) and a seqpacket
    # socket ignores it, so sendmsg(), whose msghdr BPF cannot read, stays allowed.
    for sock_type in (SOCK_STREAM, SOCK_SEQPACKET):
        f.add_rule(sc.ALLOW, "socketpair", sc.Arg(0, sc.EQ, AF_UNIX),
                   sc.Arg(1, sc.MASKED_EQ, LOW32 & ~SOCK_FLAGS, sock_type))
    # send() is sendto() with no address; an address is refused outright.
    f.add_rule(sc.ALLOW, "sendto", sc.Arg(4, sc.EQ, 0))
    # getsockopt/setsockopt(fd, level, optname, ...): level and optname are ints.
    for opt in _GETSOCKOPT_OPTIONS:
        f.add_rule(sc.ALLOW, "getsockopt", sc.Arg(1, sc.MASKED_EQ, LOW32, SOL_SOCKET),
                   sc.Arg(2, sc.MASKED_EQ, LOW32, opt))
    for opt in _SETSOCKOPT_OPTIONS:
        f.add_rule(sc.ALLOW, "setsockopt", sc.Arg(1, sc.MASKED_EQ, LOW32, SOL_SOCKET),
                   sc.Arg(2, sc.MASKED_EQ, LOW32, opt))
    for cmd in _FCNTL_COMMANDS:
        f.add_rule(sc.ALLOW, "fcntl", sc.Arg(1, sc.MASKED_EQ, LOW32, cmd))
    for cmd in _IOCTL_COMMANDS:
        f.add_rule(sc.ALLOW, "ioctl", sc.Arg(1, sc.MASKED_EQ, LOW32, cmd))
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    # statfs and fstatfs: the free-block count of the filesystem the store lives on fell
    # with every write a high invocation caused and stayed down for the next one to read
    # (the store's directory is covered, its filesystem is not). ENOSYS, not EPERM: glibc's
    # pathconf() then falls back to the usual limits (NAME_MAX 255...) instead of failing.
    f.add_rule(sc.ERRNO(errno.ENOSYS), "statfs")
    f.add_rule(sc.ERRNO(errno.ENOSYS), "fstatfs")
    # The page cache: see the module docstring. preadv2's flags are its sixth argument
    # (rwf_t, an int: only the low half of the register counts), fadvise64's advice its
    # fourth, madvise's its third.
    f.add_rule(sc.ALLOW, "preadv2", sc.Arg(5, sc.MASKED_EQ, RWF_NOWAIT, 0))
    f.add_rule(sc.ERRNO(errno.EOPNOTSUPP), "preadv2",
               sc.Arg(5, sc.MASKED_EQ, RWF_NOWAIT, RWF_NOWAIT))
    for advice in _FADVISE_ADVICE:
        f.add_rule(sc.ALLOW, "fadvise64", sc.Arg(3, sc.MASKED_EQ, LOW32, advice))
    f.add_rule(sc.ERRNO(0), "fadvise64", sc.Arg(3, sc.MASKED_EQ, LOW32, _FADV_DONTNEED))
    for advice in _MADVISE_ADVICE:
        f.add_rule(sc.ALLOW, "madvise", sc.Arg(2, sc.MASKED_EQ, LOW32, advice))
    for advice in _MADVISE_IGNORED:
        f.add_rule(sc.ERRNO(0), "madvise", sc.Arg(2, sc.MASKED_EQ, LOW32, advice))
    # statx's mask is its fourth argument (an unsigned int).
    f.add_rule(sc.ALLOW, "statx", sc.Arg(3, sc.MASKED_EQ, STATX_MNT_ID_BITS, 0))
    # Plain opens, but no unnamed (O_TMPFILE) inode: see the module docstring.
    f.add_rule(sc.ALLOW, "open", sc.Arg(1, sc.MASKED_EQ, O_TMPFILE_BIT, 0))
    f.add_rule(sc.ALLOW, "openat", sc.Arg(2, sc.MASKED_EQ, O_TMPFILE_BIT, 0))
    f.add_rule(sc.ERRNO(errno.ENOSYS), "openat2")
    if allow_processes:
        for name in _PROCESS_CALLS:
            f.add_rule(sc.ALLOW, name)
        f.add_rule(sc.ALLOW, "clone",
                   sc.Arg(0, sc.MASKED_EQ, syscalls.NAMESPACE_FLAGS | CLONE_PIDFD, 0))
        # Processes of its own may be signalled by group (its PID namespace bounds whom).
        f.add_rule(sc.ALLOW, "kill")
    else:
        # pid_t is 32 bits: test its sign bit only, whatever the upper half of the register.
        f.add_rule(sc.ALLOW, "kill", sc.Arg(0, sc.MASKED_EQ, 0x80000000, 0))
        # Threads only: CLONE_THREAD set, no namespace flags.
        mask = syscalls.CLONE_THREAD | syscalls.NAMESPACE_FLAGS | CLONE_PIDFD
        f.add_rule(sc.ALLOW, "clone", sc.Arg(0, sc.MASKED_EQ, mask, syscalls.CLONE_THREAD))
    with tempfile.TemporaryFile() as out:
        f.export_bpf(out)
        out.seek(0)
        program = out.read()
    if not program:
        raise OSError(errno.EINVAL, "libseccomp exported an empty filter")
    return program


def kernel_supports_seccomp() -> str | None:
    """None when seccomp filters with kill_process are available, else the reason."""
    try:
        with open("/proc/sys/kernel/seccomp/actions_avail") as fh:
            actions = fh.read().split()
    except OSError:
        return "the kernel has no seccomp filter support (CONFIG_SECCOMP_FILTER)"
    if "kill_process" not in actions or "errno" not in actions:
        return f"the kernel's seccomp lacks kill_process/errno (has {' '.join(actions)})"
    try:
        import pyseccomp  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"libseccomp is not usable ({exc}); install libseccomp2 and `pip install pyseccomp`"
    return None


__all__ = ["build_filter", "kernel_supports_seccomp"]
