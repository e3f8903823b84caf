"""Module-level code that tries to reach other invocations before any event arrives.

It runs in a pre-forked child, confined, while siblings wait for their events.
"""

import os
import signal

FINDINGS: dict = {}


def _try(name, fn):
    try:
        FINDINGS[name] = {"ok": repr(fn())[:200]}
    except OSError as exc:
        FINDINGS[name] = {"errno": exc.errno}


def _open_fds():
    fds = []
    for fd in range(1024):
        try:
            os.fstat(fd)
        except OSError:
            continue
        fds.append(fd)
    return fds


FINDINGS["open_fds"] = _open_fds()
# Every process it may signal: in its own PID namespace there is none but itself.
_try("kill_all", lambda: os.kill(-1, signal.SIGKILL))
_try("kill_pid_2", lambda: os.kill(2, signal.SIGKILL))
# pid 1 is the child itself, the init of its own PID namespace; pid 2, nobody. Signal 0:
# only the permission check.
_try("kill_pid_1", lambda: os.kill(1, 0))
_try("proc", lambda: os.listdir("/proc"))
_try("dev_shm", lambda: open("/dev/shm/trapeze-evil", "w"))
_try("shared_tmp", lambda: open("/var/tmp/trapeze-evil", "w"))
_try("pipe_to_parent", lambda: os.write(5, b"x"))
FINDINGS["tmp_listing"] = os.listdir("/tmp")


def handler(event, context):
    return FINDINGS
