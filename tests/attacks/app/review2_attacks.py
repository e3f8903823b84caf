"""Handlers for tests/attacks/test_review_confinement.py: datagram sockets, file locks and
file metadata (second confinement review). Each returns the errno of every attempt (0 when
it succeeded), so that a test can assert exactly what stopped it."""

import array
import ctypes
import fcntl
import os
import socket
import struct

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

# x86_64 syscall numbers.
SYS = {"ioctl": 16, "socketpair": 53, "fcntl": 72, "chmod": 90, "fchmod": 91, "chown": 92,
       "fchown": 93, "lchown": 94, "utime": 132, "utimes": 235, "fchownat": 260,
       "futimesat": 261, "fchmodat": 268, "utimensat": 280, "fchmodat2": 452}
AT_FDCWD = -100
F_SETLEASE, F_GETLEASE, F_NOTIFY = 1024, 1025, 1026
F_SETOWN, F_SETSIG, F_SETOWN_EX, F_GETOWN_EX = 8, 10, 15, 16
F_OFD_GETLK, F_OFD_SETLK, F_OFD_SETLKW = 36, 37, 38
F_SETPIPE_SZ, F_GET_SEALS = 1031, 1034
FS_IOC_GETFLAGS, FS_IOC_SETFLAGS = 0x80086601, 0x40086602
FS_IOC_FSGETXATTR, FS_IOC_FSSETXATTR = 0x801C581F, 0x401C5820
FS_NODUMP_FL = 0x40
HIGH = 1 << 32  # garbage in the upper half of a 32-bit argument's register


def _errno(fn, *args, **kw):
    try:
        fn(*args, **kw)
    except OSError as exc:
        return exc.errno
    return 0


def _raw(name, *args):
    ctypes.set_errno(0)
    ret = _libc.syscall(ctypes.c_long(SYS[name]),
                        *(a if isinstance(a, ctypes.c_char_p | ctypes.Array) else
                          ctypes.c_long(a) for a in args))
    return 0 if ret >= 0 else ctypes.get_errno()


def dgram(event):
    """Reach a host datagram socket (event["path"], like /dev/log): from a datagram
    socketpair, or by naming a destination on a stream or seqpacket pair; pass fd 3."""
    path = event["path"]
    out = {}
    fds = (ctypes.c_int * 2)()
    for name, kind in (("dgram", socket.SOCK_DGRAM),
                       ("dgram_cloexec_nonblock",
                        socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)):
        try:
            a, b = socket.socketpair(socket.AF_UNIX, kind)
        except OSError as exc:
            out[name] = exc.errno
            continue
        out[name] = 0
        out[name + "_sendto"] = _errno(a.sendto, b"from a confined child", path)
    out["dgram_high_bits"] = _raw("socketpair", socket.AF_UNIX, HIGH | socket.SOCK_DGRAM, 0,
                                  fds)
    out["stream_bad_flag"] = _raw("socketpair", socket.AF_UNIX, socket.SOCK_STREAM | 0x100,
                                  0, fds)
    out["socket"] = _errno(socket.socket, socket.AF_UNIX, socket.SOCK_DGRAM)

    # Allowed pairs: an address given with the data is refused or ignored.
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    out["stream_sendto"] = _errno(a.sendto, b"named", path)
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [3]))]
    out["stream_sendmsg"] = _errno(a.sendmsg, [b"fd"], rights, 0, path)
    out["stream_connect"] = _errno(a.connect, path)
    a.send(b"plain")
    out["stream_send"] = b.recv(16).decode()
    s, t = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    out["seqpacket_sendmsg"] = _errno(s.sendmsg, [b"seq"], rights, 0, path)
    msg, anc, _flags, _addr = t.recvmsg(16, socket.CMSG_SPACE(4))
    out["seqpacket_peer_got"] = [msg.decode(), len(anc)]
    return out


def locks(event):
    """Every kind of lock, lease and notification on files other invocations can open;
    then the fcntl commands ordinary code needs."""
    out = {}
    for path in event["paths"]:
        fd = os.open(path, os.O_RDONLY)
        lk = struct.pack("hhqqi", fcntl.F_RDLCK, 0, 0, 0, 0)
        out[path] = {
            "flock_sh": _errno(fcntl.flock, fd, fcntl.LOCK_SH | fcntl.LOCK_NB),
            "flock_ex": _errno(fcntl.flock, fd, fcntl.LOCK_EX | fcntl.LOCK_NB),
            "lockf": _errno(fcntl.lockf, fd, fcntl.LOCK_SH | fcntl.LOCK_NB),
            "F_SETLK": _errno(fcntl.fcntl, fd, fcntl.F_SETLK, lk),
            "F_SETLKW": _errno(fcntl.fcntl, fd, fcntl.F_SETLKW, lk),
            "F_GETLK": _errno(fcntl.fcntl, fd, fcntl.F_GETLK, lk),
            "F_OFD_SETLK": _errno(fcntl.fcntl, fd, F_OFD_SETLK, lk),
            "F_OFD_SETLKW": _errno(fcntl.fcntl, fd, F_OFD_SETLKW, lk),
            "F_OFD_GETLK": _errno(fcntl.fcntl, fd, F_OFD_GETLK, lk),
            "F_SETLEASE": _errno(fcntl.fcntl, fd, F_SETLEASE, fcntl.F_RDLCK),
            "F_GETLEASE": _errno(fcntl.fcntl, fd, F_GETLEASE),
            "F_SETOWN": _errno(fcntl.fcntl, fd, F_SETOWN, os.getpid()),
            "F_SETOWN_EX": _errno(fcntl.fcntl, fd, F_SETOWN_EX, bytes(8)),
            "F_GETOWN_EX": _errno(fcntl.fcntl, fd, F_GETOWN_EX, bytes(8)),
            "F_SETSIG": _errno(fcntl.fcntl, fd, F_SETSIG, 10),
            # The kernel reads cmd as a 32-bit int: junk above it must not pass the filter.
            "F_SETLK_high_bits": _raw("fcntl", fd, HIGH | fcntl.F_SETLK,
                                      ctypes.create_string_buffer(lk)),
        }
        os.close(fd)
    folder = os.open(os.path.dirname(event["paths"][-1]), os.O_RDONLY)
    out["F_NOTIFY"] = _errno(fcntl.fcntl, folder, F_NOTIFY, 0x80000001)
    out["F_SETPIPE_SZ"] = _errno(fcntl.fcntl, 1, F_SETPIPE_SZ, 1 << 20)
    # What ordinary code uses on its own descriptors still works.
    r, w = os.pipe()
    ok = {
        "F_GETFD": _errno(fcntl.fcntl, r, fcntl.F_GETFD),
        "F_SETFD": _errno(fcntl.fcntl, r, fcntl.F_SETFD, fcntl.FD_CLOEXEC),
        "F_GETFL": _errno(fcntl.fcntl, r, fcntl.F_GETFL),
        "set_blocking": _errno(os.set_blocking, r, False),
        "F_DUPFD": _errno(fcntl.fcntl, r, fcntl.F_DUPFD, 20),
        "F_DUPFD_CLOEXEC": _errno(fcntl.fcntl, r, fcntl.F_DUPFD_CLOEXEC, 30),
        "F_GET_SEALS": _errno(fcntl.fcntl, r, F_GET_SEALS),
        "set_inheritable": _errno(os.set_inheritable, r, True),
        "dup": _errno(os.dup, r),
        "isatty": os.isatty(r),
        "FIONREAD": _errno(fcntl.ioctl, r, 0x541B, bytes(4)),
    }
    out["ordinary"] = ok
    return out


def sqlite(event):
    """A function keeping a SQLite database in its private /tmp: file locks are refused,
    so the default VFS fails; `vfs=unix-none` (no locking) and :memory: work."""
    import sqlite3

    out = {}
    for name, target, uri in (("default", "/tmp/a.db", False),
                              ("unix-none", "file:/tmp/b.db?vfs=unix-none", True),
                              ("memory", ":memory:", False)):
        try:
            db = sqlite3.connect(target, uri=uri)
            db.execute("create table t (x)")
            db.execute("insert into t values (1)")
            db.commit()
            out[name] = db.execute("select x from t").fetchall()
            db.close()
        except sqlite3.Error as exc:
            out[name] = f"{type(exc).__name__}: {exc}"
    return out


def metadata(event):
    """Change the mode, times, owner or attributes of event["path"], a file the child
    owns: in its own /tmp, or (user-namespace mode) a file of the deploying user."""
    path = event["path"]
    if event.get("create"):
        with open(path, "w") as fh:
            fh.write("mine\n")
    c_path = ctypes.c_char_p(path.encode())
    uid, gid = os.getuid(), os.getgid()
    fd = os.open(path, os.O_RDONLY)
    flags = array.array("i", [FS_NODUMP_FL])
    out = {
        "os.chmod": _errno(os.chmod, path, 0o600),
        "os.fchmod": _errno(os.fchmod, fd, 0o600),
        "os.utime": _errno(os.utime, path, ns=(10**18, 10**18)),
        "os.utime_now": _errno(os.utime, path),
        "futimens": _errno(os.utime, fd),
        "os.chown_self": _errno(os.chown, path, uid, gid),
        "chmod": _raw("chmod", c_path, 0o600),
        "fchmod": _raw("fchmod", fd, 0o600),
        "fchmodat": _raw("fchmodat", AT_FDCWD, c_path, 0o600, 0),
        "fchmodat2": _raw("fchmodat2", AT_FDCWD, c_path, 0o600, 0),
        "utime": _raw("utime", c_path, 0),
        "utimes": _raw("utimes", c_path, 0),
        "futimesat": _raw("futimesat", AT_FDCWD, c_path, 0),
        "utimensat": _raw("utimensat", AT_FDCWD, c_path, 0, 0),
        "chown": _raw("chown", c_path, uid, gid),
        "fchown": _raw("fchown", fd, uid, gid),
        "lchown": _raw("lchown", c_path, uid, gid),
        "fchownat": _raw("fchownat", AT_FDCWD, c_path, uid, gid, 0),
        "FS_IOC_GETFLAGS": _errno(fcntl.ioctl, fd, FS_IOC_GETFLAGS, bytes(4)),
        "FS_IOC_SETFLAGS": _errno(fcntl.ioctl, fd, FS_IOC_SETFLAGS, flags),
        "FS_IOC_FSGETXATTR": _errno(fcntl.ioctl, fd, FS_IOC_FSGETXATTR, bytes(28)),
        "FS_IOC_FSSETXATTR": _errno(fcntl.ioctl, fd, FS_IOC_FSSETXATTR, bytes(28)),
        "FS_IOC_SETFLAGS_high_bits": _raw("ioctl", fd, HIGH | FS_IOC_SETFLAGS,
                                          ctypes.create_string_buffer(4)),
    }
    os.close(fd)
    st = os.stat(path)
    out["after"] = [st.st_mode & 0o7777, st.st_mtime_ns]
    return out


def handler(event, context):
    return globals()[event["attack"]](event)
