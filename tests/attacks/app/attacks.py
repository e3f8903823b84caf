"""Attack handlers: each tries one way out and reports exactly how it was stopped.

`handler(event, context)` dispatches on event["attack"]. A handler returns
{"errno": n, "exc": "TypeName"} when the attempt raised, or whatever it obtained otherwise.
"""

import ctypes
import mmap
import os
import signal
import socket
import struct
import sys
import threading
import time

from trapeze.guest import kv

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def _caught(fn, *args):
    try:
        result = fn(*args)
    except OSError as exc:
        return {"errno": exc.errno, "exc": type(exc).__name__}
    return {"ok": repr(result)[:200]}


def raw_syscall(number, *args):
    ret = libc.syscall(ctypes.c_long(number), *[ctypes.c_long(a) for a in args])
    return {"ret": ret, "errno": ctypes.get_errno() if ret < 0 else 0}


def tcp_loopback(event):
    def go():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.connect(("127.0.0.1", event["port"]))
    return _caught(go)


def udp_loopback(event):
    def go():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"leak", ("127.0.0.1", event["port"]))
    return _caught(go)


def unix_path(event):
    def go():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(event["path"])
    return _caught(go)


def unix_abstract(event):
    def go():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect("\0" + event["name"])
    return _caught(go)


def write_file(event):
    def go():
        with open(event["path"], "w") as fh:
            fh.write("pwned")
    return _caught(go)


def read_file(event):
    def go():
        with open(event["path"], "rb") as fh:
            return fh.read(100)
    return _caught(go)


def listdir(event):
    return _caught(os.listdir, event["path"])


def exec_sh(event):
    return _caught(os.execv, "/bin/sh", ["sh", "-c", "echo pwned"])


def fork(event):
    def go():
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        return pid
    return _caught(go)


SYSCALLS = {
    # name: (number, args) - x86_64
    "socket": (41, (2, 1, 0)),
    "ptrace": (101, (16, 1, 0, 0)),  # PTRACE_ATTACH to pid 1
    "process_vm_readv": (310, (1, 0, 0, 0, 0, 0)),
    "io_uring_setup": (425, (8, 0)),
    "unshare": (272, (0x10000000,)),  # CLONE_NEWUSER
    "bpf": (321, (0, 0, 0)),
    "mount": (165, (0, 0, 0, 0, 0)),
    "memfd_create": (319, (0, 0)),
    "keyctl": (250, (0, 0, 0, 0, 0)),
    "clone": (56, (17, 0, 0, 0, 0)),  # plain fork via raw clone(SIGCHLD)
    "clone3": (435, (0, 0)),
}


def syscall(event):
    number, args = SYSCALLS[event["name"]]
    if event["name"] == "memfd_create":
        name = ctypes.create_string_buffer(b"x")
        args = (ctypes.addressof(name), 0)
    return raw_syscall(number, *args)


def int80(event):
    """i386 socket(AF_INET, SOCK_STREAM, 0) through `int 0x80` from an RWX page."""
    code = bytes(
        [0xB8, 0x67, 0x01, 0x00, 0x00,  # mov eax, 359 (i386 socket)
         0xBB, 0x02, 0x00, 0x00, 0x00,  # mov ebx, AF_INET
         0xB9, 0x01, 0x00, 0x00, 0x00,  # mov ecx, SOCK_STREAM
         0xBA, 0x00, 0x00, 0x00, 0x00,  # mov edx, 0
         0xCD, 0x80,                    # int 0x80
         0xC3]                          # ret (eax = fd or -errno)
    )
    page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(code)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(page))
    fn = ctypes.CFUNCTYPE(ctypes.c_int)(addr)
    return {"fd": fn()}


def signal_pids(event):
    out = {}
    for pid in event["pids"]:
        if pid == os.getpid():  # the test lists every waiting child: this one served it
            out[str(pid)] = "self"
            continue
        out[str(pid)] = _caught(os.kill, pid, signal.SIGKILL)
    out["-1"] = _caught(os.kill, -1, signal.SIGKILL)
    out["self"] = os.getpid()
    return out


def raw_frame(event):
    """Bypass the guest library: write bytes straight onto the channel (fd 3)."""
    import msgpack

    if "body" in event:
        body = msgpack.packb(event["body"], use_bin_type=True)
        data = struct.pack(">I", len(body)) + body
    else:
        data = event["raw"]
    os.write(3, data)
    time.sleep(5)
    return "not killed"


def thread_outlives(event):
    def late():
        time.sleep(0.3)
        kv.put("t", "late", "written after the invocation ended")

    threading.Thread(target=late).start()
    return "returned"


def grandchild(event):
    import subprocess

    subprocess.Popen(["/bin/sleep", event["marker"]], start_new_session=True)
    return "spawned"


def sleep_forever(event):
    while True:
        time.sleep(60)


def spin(event):
    while True:
        pass


def allocate(event):
    block = bytearray(event["gb"] * 1024**3)
    return len(block)


def big_result(event):
    return b"x" * (event["mb"] * 1024 * 1024)


def fill_one_file(event):
    def go():
        with open("/tmp/big", "wb") as fh:
            chunk = b"\0" * (1 << 20)
            while True:
                fh.write(chunk)
                fh.flush()
    return _caught(go)


def fill_many_files(event):
    def go():
        chunk = b"\0" * (1 << 20)
        for i in range(100000):
            with open(f"/tmp/f{i}", "wb") as fh:
                for _ in range(4):
                    fh.write(chunk)
    return _caught(go)


COUNTER = 0


def leave_state(event):
    global COUNTER
    COUNTER += 1
    sys.modules["trapeze_leak"] = type(sys)("trapeze_leak")
    os.environ["LEAK"] = event["secret"]
    with open("/tmp/leak.txt", "w") as fh:
        fh.write(event["secret"])
    import json

    json.trapeze_leak = event["secret"]
    return COUNTER


def look_for_state(event):
    import json

    found = {}
    found["counter"] = COUNTER
    found["module"] = "trapeze_leak" in sys.modules
    found["env"] = os.environ.get("LEAK")
    found["tmp"] = sorted(os.listdir("/tmp"))
    found["json_attr"] = getattr(json, "trapeze_leak", None)
    return found


def tmpfile(event):
    """An unnamed inode in tmp (no directory event), then tempfile's ordinary fallback."""
    import tempfile

    out = _caught(os.open, "/tmp", os.O_TMPFILE | os.O_RDWR, 0o600)
    with tempfile.TemporaryFile() as fh:
        fh.write(b"fine")
        fh.seek(0)
        out["fallback"] = fh.read().decode()
    return out


def tmp_works(event):
    with open("/tmp/ok.txt", "w") as fh:
        fh.write("fine")
    with open("/tmp/ok.txt") as fh:
        return fh.read()


def handler(event, context):
    return globals()[event["attack"]](event)
