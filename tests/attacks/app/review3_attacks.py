"""Handlers for tests/attacks/test_review_page_cache.py and test_review_shared_counters.py:
kernel state every child shares, as a channel between invocations, without timing anything.
The page cache of a file every child can read (the app's own files, the interpreter's): one
invocation loads or evicts a file's pages, another asks whether they are cached. The pid
counter: one invocation starts threads, another reads the ids its own threads get. The
mount counter: the id of a mount grows with every mount namespace made for a child. Socket
cookies and pidfd inode numbers: machine-wide counters. The status flags of stdin, when it
was one open file description every child shared. Free blocks of a filesystem (statfs) and
free memory (sysinfo), which the store's writes move. The slot uid a child runs as. Each
probe returns what it saw, or the errno that stopped it."""

import asyncio
import ctypes
import fcntl
import mmap
import os
import socket
import threading
import time

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
_libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
PROT_READ, MAP_PRIVATE = 1, 2

SYS_PREADV2, SYS_FADVISE64, SYS_MADVISE, SYS_STATX, SYS_SYSINFO = 327, 221, 28, 332, 99
RWF_NOWAIT = 0x8
POSIX_FADV_DONTNEED = 4
MADV_COLD, MADV_PAGEOUT = 20, 21
PAGE = mmap.PAGESIZE


def _errno(fn, *args):
    try:
        fn(*args)
    except OSError as exc:
        return exc.errno
    return 0


def _libc_errno(ret):
    return ctypes.get_errno() if ret != 0 else 0


def _map(fd, size):
    """A read-only private mapping of the file, by address (libc's mmap: the mmap module
    hides the address of a read-only mapping)."""
    addr = _libc.mmap(None, size, PROT_READ, MAP_PRIVATE, fd, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap")
    return addr


def evict(path):
    """Drop the file's pages from the page cache, every way an unprivileged process has."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        out = {"fadvise": _errno(os.posix_fadvise, fd, 0, 0, POSIX_FADV_DONTNEED)}
        ctypes.set_errno(0)
        raw = _libc.syscall(ctypes.c_long(SYS_FADVISE64), fd, 0, 0, POSIX_FADV_DONTNEED)
        out["fadvise_raw"] = ctypes.get_errno() if raw != 0 else 0
        addr = _map(fd, size)
        for name, advice in (("madv_cold", MADV_COLD), ("madv_pageout", MADV_PAGEOUT)):
            ctypes.set_errno(0)
            out[name] = _libc_errno(_libc.madvise(addr, size, advice))
        _libc.munmap(addr, size)
        return out
    finally:
        os.close(fd)


def load(path):
    with open(path, "rb") as fh:
        return {"read": len(fh.read())}


def probe(path):
    """Is the file's first page cached? Asked without a clock."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        out = {}
        try:
            os.preadv(fd, [bytearray(PAGE)], 0, os.RWF_NOWAIT)
            out["preadv2_nowait"] = "cached"
        except BlockingIOError:
            out["preadv2_nowait"] = "not cached"
        except OSError as exc:
            out["preadv2_nowait"] = exc.errno
        # The same call with the flag in the upper half of the register, and plain.
        buf = ctypes.create_string_buffer(PAGE)
        iov = (ctypes.c_void_p * 2)(ctypes.addressof(buf), PAGE)
        ctypes.set_errno(0)
        ret = _libc.syscall(ctypes.c_long(SYS_PREADV2), fd, iov, 1, 0, 0,
                            ctypes.c_long((1 << 32) | RWF_NOWAIT))
        out["preadv2_nowait_raw"] = ctypes.get_errno() if ret < 0 else "answered"
        out["preadv2_plain"] = _errno(os.preadv, fd, [bytearray(16)], 0, 0)
        addr = _map(fd, size)
        vec = (ctypes.c_ubyte * ((size + PAGE - 1) // PAGE))()
        ctypes.set_errno(0)
        ret = _libc.mincore(addr, size, vec)
        out["mincore"] = ctypes.get_errno() if ret != 0 else [v & 1 for v in vec]
        _libc.munmap(addr, size)
        return out
    finally:
        os.close(fd)


def fault_around(path):
    """Touch one page of a mapping and count the pages the kernel mapped with it: it maps
    the neighbours that are already cached (fault-around), so the count says what was."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        addr = _map(fd, size)
        # A page in the middle of the first fault-around window.
        _ = ctypes.c_char.from_address(addr + 8 * PAGE).value
        out = {}
        try:
            with open("/proc/self/smaps") as fh:
                text = fh.read()
        except OSError as exc:
            out["smaps"] = exc.errno
        else:
            lines = text.splitlines()
            start = f"{addr:x}-"
            for i, line in enumerate(lines):
                if line.startswith(start):
                    rss = next(x for x in lines[i + 1:] if x.startswith("Rss:"))
                    out["smaps"] = int(rss.split()[1])
                    break
        try:
            with open("/proc/self/pagemap", "rb") as fh:
                fh.seek((addr // PAGE) * 8)
                entries = fh.read(16 * 8)
            out["pagemap"] = [int.from_bytes(entries[i:i + 8], "little") >> 63
                              for i in range(0, len(entries), 8)]
        except OSError as exc:
            out["pagemap"] = exc.errno
        _libc.munmap(addr, size)
        return out
    finally:
        os.close(fd)


def spend_pids(n):
    """Start and join n threads: each takes an id from the pid counter of its namespace."""
    for _ in range(n):
        t = threading.Thread(target=lambda: None)
        t.start()
        t.join()
    return {"threads": n}


def read_pids(_):
    """The ids this process and a new thread of its get."""
    tids = []
    t = threading.Thread(target=lambda: tids.append(threading.get_native_id()))
    t.start()
    t.join()
    return {"pid": os.getpid(), "thread": tids[0]}


def statx_mount_ids(path):
    """statx() of a path asking for its mount's id, unique or not, and for nothing of that."""
    out = {}
    for name, mask in (("mnt_id_unique", 0x4000), ("mnt_id", 0x1000), ("basic", 0x7FF)):
        buf = ctypes.create_string_buffer(256)
        ctypes.set_errno(0)
        ret = _libc.syscall(ctypes.c_long(SYS_STATX), -100, path.encode(), 0, mask, buf)
        out[name] = ctypes.get_errno() if ret != 0 else "answered"
    return out


def stdin_flags(event):
    """Set O_APPEND/O_NONBLOCK on fd 0 as event["bits"] says (1, 2), then read them back."""
    bits = event.get("bits")
    if bits is not None:
        fl = fcntl.fcntl(0, fcntl.F_GETFL) & ~(os.O_APPEND | os.O_NONBLOCK)
        fl |= (os.O_APPEND if bits & 1 else 0) | (os.O_NONBLOCK if bits & 2 else 0)
        fcntl.fcntl(0, fcntl.F_SETFL, fl)
    fl = fcntl.fcntl(0, fcntl.F_GETFL)
    return (1 if fl & os.O_APPEND else 0) | (2 if fl & os.O_NONBLOCK else 0)


SO_PEERCRED, SO_COOKIE, SO_PASSPIDFD, SO_PEERPIDFD = 17, 57, 76, 77


def socket_options(_):
    """Options naming machine-wide counters or other processes, and what ordinary code
    asks of a socket pair."""
    a, b = socket.socketpair()
    out = {
        "SO_COOKIE": _errno(a.getsockopt, socket.SOL_SOCKET, SO_COOKIE, 8),
        "SO_PEERPIDFD": _errno(a.getsockopt, socket.SOL_SOCKET, SO_PEERPIDFD),
        "SO_PEERCRED": _errno(a.getsockopt, socket.SOL_SOCKET, SO_PEERCRED, 12),
        "SO_PASSPIDFD": _errno(a.setsockopt, socket.SOL_SOCKET, SO_PASSPIDFD, 1),
        "channel_SO_PEERPIDFD": _errno(socket.socket(fileno=os.dup(3)).getsockopt,
                                       socket.SOL_SOCKET, SO_PEERPIDFD),
    }
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)
    again = socket.socket(fileno=os.dup(a.fileno()))  # asks SO_TYPE, SO_DOMAIN, SO_PROTOCOL
    a.sendall(b"ping")
    out["ordinary"] = [again.type == socket.SOCK_STREAM, b.recv(4).decode(),
                       a.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)]

    async def main():
        await asyncio.sleep(0)
        return "ran"

    out["asyncio"] = asyncio.run(main())
    return out


def clone_pidfd(_):
    """A thread created with CLONE_PIDFD: the pidfd's inode number counts every process and
    thread the machine has created."""
    flags = 0x100 | 0x200 | 0x400 | 0x800 | 0x10000 | 0x40000 | 0x1000  # ... | CLONE_PIDFD
    _libc.clone.restype = ctypes.c_int
    _libc.clone.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                            ctypes.c_void_p)
    stack = ctypes.create_string_buffer(1 << 16)
    pidfd = ctypes.c_int(-1)
    ctypes.set_errno(0)
    # The thread runs syscall(SYS_exit): it ends at once, leaving the process be.
    tid = _libc.clone(ctypes.cast(_libc.syscall, ctypes.c_void_p).value,
                      ctypes.addressof(stack) + (1 << 16) - 64, flags, 60, ctypes.byref(pidfd))
    if tid < 0:
        return {"errno": ctypes.get_errno()}
    time.sleep(0.01)
    return {"pidfd_ino": os.fstat(pidfd.value).st_ino}


def disk_and_memory(_):
    out = {"statvfs": _errno(os.statvfs, "/usr"), "fstatvfs": _errno(os.fstatvfs, 0)}
    info = ctypes.create_string_buffer(128)
    ctypes.set_errno(0)
    ret = _libc.syscall(ctypes.c_long(SYS_SYSINFO), info)
    out["sysinfo"] = ctypes.get_errno() if ret != 0 else "answered"
    # What ordinary code asks instead still answers: pathconf (glibc falls back when statfs
    # says ENOSYS) and the memory size (the function's limit).
    out["name_max"] = os.pathconf("/tmp", "PC_NAME_MAX")
    out["phys_bytes"] = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return out


def handler(event, context):
    if event["attack"] == "tmp_dev":
        return [os.stat("/tmp").st_dev, os.readlink("/proc/self/ns/mnt")]
    if event["attack"] == "uid":
        return [os.getuid(), os.stat("/tmp").st_uid]
    if event["attack"] == "spend_pids":
        return spend_pids(event["n"])
    if event["attack"] == "stdin_flags":
        return stdin_flags(event)
    return {"evict": evict, "load": load, "probe": probe, "fault_around": fault_around,
            "read_pids": read_pids, "statx": statx_mount_ids, "socket_options": socket_options,
            "clone_pidfd": clone_pidfd,
            "disk_and_memory": disk_and_memory}[event["attack"]](event.get("path"))
