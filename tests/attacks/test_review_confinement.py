"""Second confinement review: a host's datagram sockets, file locks and file metadata shared
between invocations, and app files the zygote compiled for children that could not read
them. One test per hole, each asserting what stops it (handlers: app/review2_attacks.py)."""

from __future__ import annotations

import ast
import errno
import fcntl
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from attack_helpers import APP, make_sandbox

from fake_monitor import FakeMonitor
from trapeze.sandbox import Sandbox, SandboxSpec, app_modules
from trapeze.sandbox.app_modules import AppModules

EPERM = errno.EPERM
NOBODY = 65534
# As root, a zygote running as `nobody` (the user-namespace mode, as an ordinary user runs
# it); as an ordinary user, that is the default path.
USERNS = {"zygote_uid": NOBODY} if os.geteuid() == 0 else {}


@pytest.fixture(scope="module")
def sb() -> Iterator[Sandbox]:
    s = make_sandbox(handler="review2_attacks:handler", function="review2", timeout_s=10)
    yield s
    s.close()


def run(sandbox: Sandbox, attack: str, **event: object) -> dict:
    out = sandbox.run({"attack": attack, **event}, {}, FakeMonitor())
    assert out.status == "ok", out
    return out.value


# --- 1. datagram sockets: socketpair() stream/seqpacket only, sendto() without address ----

@pytest.fixture
def host_dgram_socket() -> Iterator[tuple[str, socket.socket]]:
    """A host service on a pathname datagram socket anyone may write to (like /dev/log),
    where a child can resolve its path (/var/tmp: not covered, not its private /tmp)."""
    folder = tempfile.mkdtemp(dir="/var/tmp", prefix="trapeze-test-")
    os.chmod(folder, 0o755)
    path = os.path.join(folder, "log.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    os.chmod(path, 0o666)
    srv.setblocking(False)
    try:
        yield path, srv
    finally:
        srv.close()
        shutil.rmtree(folder, ignore_errors=True)


def test_no_datagram_reaches_a_host_socket(sb: Sandbox, host_dgram_socket) -> None:
    """A SOCK_DGRAM socketpair sent to /dev/log-like sockets by path, with fd 3 (the
    channel) attached (review). seccomp refuses the pair (whatever flags or junk in the
    register's upper half) and any sendto() naming an address; on the pairs that remain a
    named destination is refused (stream: EISCONN) or ignored (seqpacket: it reaches the
    peer), and connect() is refused."""
    path, srv = host_dgram_socket
    out = run(sb, "dgram", path=path)
    for key in ("dgram", "dgram_cloexec_nonblock", "dgram_high_bits", "stream_bad_flag",
                "socket", "stream_sendto", "stream_connect"):
        assert out[key] == EPERM, (key, out)
    assert out["stream_sendmsg"] == errno.EISCONN, out
    assert out["seqpacket_sendmsg"] == 0 and out["seqpacket_peer_got"] == ["seq", 1], out
    assert out["stream_send"] == "plain"  # send() (sendto without an address) still works
    with pytest.raises(BlockingIOError):
        srv.recvmsg(64, socket.CMSG_SPACE(16))


# --- 2. file locks: flock denied, fcntl only for descriptor and status flags --------------

def test_file_locks_cannot_signal_between_invocations(sb: Sandbox) -> None:
    """A high invocation held flock()s on files every child can open (/etc/passwd, /usr
    files) and a concurrent low one probed them with LOCK_NB: one bit per file (review).
    The host holds one here: without the filter the child's probe would see EWOULDBLOCK."""
    shared = ["/etc/passwd", str(APP / "review2_attacks.py")]
    fd = os.open(shared[1], os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        out = run(sb, "locks", paths=shared)
    finally:
        os.close(fd)
    for path in shared:
        assert out[path] and all(v == EPERM for v in out[path].values()), (path, out[path])
    assert out["F_NOTIFY"] == EPERM and out["F_SETPIPE_SZ"] == EPERM, out
    ordinary = out["ordinary"]
    # F_GET_SEALS passes the filter; the kernel refuses it on a pipe.
    assert ordinary.pop("F_GET_SEALS") == errno.EINVAL
    assert ordinary.pop("isatty") is False
    assert all(v == 0 for v in ordinary.values()), ordinary


def test_sqlite_in_private_tmp_needs_a_lock_free_vfs(sb: Sandbox) -> None:
    """The documented cost: SQLite's default VFS locks its file and fails; `vfs=unix-none`
    (no locks: the database is the invocation's own) and :memory: work."""
    out = run(sb, "sqlite")
    assert out["default"] == "OperationalError: access permission denied", out
    assert out["unix-none"] == [[1]] and out["memory"] == [[1]], out


# --- 3. file metadata: chmod, utime, chown families and file-attribute ioctls -------------

_METADATA_CALLS = (
    "os.chmod", "os.fchmod", "os.utime", "os.utime_now", "futimens", "os.chown_self",
    "chmod", "fchmod", "fchmodat", "fchmodat2", "utime", "utimes", "futimesat", "utimensat",
    "chown", "fchown", "lchown", "fchownat", "FS_IOC_GETFLAGS", "FS_IOC_SETFLAGS",
    "FS_IOC_FSGETXATTR", "FS_IOC_FSSETXATTR", "FS_IOC_SETFLAGS_high_bits",
)


def test_metadata_of_own_files_cannot_change(sb: Sandbox) -> None:
    """A file in the child's private /tmp is its own (the owner may chmod, utime, chown
    to itself, chattr): seccomp refuses, the cost documented in docs/security-model.md."""
    out = run(sb, "metadata", path="/tmp/mine", create=True)
    for call in _METADATA_CALLS:
        assert out[call] == EPERM, (call, out)
    assert out["after"][0] != 0o600 and out["after"][1] != 10**18


@pytest.fixture
def var_tmp() -> Iterator[Path]:
    # Not under /tmp: an app there is bound read-only into each child's private /tmp
    # (EROFS would stop chmod first); elsewhere a child sees it in place.
    base = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="trapeze-test-"))
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_userns_child_cannot_change_the_deploying_users_files(var_tmp: Path) -> None:
    """In the user-namespace mode a child is uid 0 of a namespace mapping the deploying
    user, so it owns the app's files: it set an app file's mtime to a secret and chmod'ed
    others to 0 (state for the next, lower invocation; a denial of service), which Landlock
    does not govern (review). seccomp refuses every call."""
    app = var_tmp / "app"
    app.mkdir()
    shutil.copy(APP / "review2_attacks.py", app / "review2_attacks.py")
    data = app / "data.txt"
    data.write_text("deployed\n")
    for p in (var_tmp, app):
        p.chmod(0o755)
    if os.geteuid() == 0:
        for p in (var_tmp, app, app / "review2_attacks.py", data):
            os.chown(p, NOBODY, NOBODY)  # the deploying user's files
    before = os.stat(data)
    spec = SandboxSpec("meta", app, "review2_attacks:handler", prefork=0, timeout_s=10)
    with Sandbox(spec, **USERNS) as s:
        assert s.mode == "userns"
        out = run(s, "metadata", path=str(data))
    for call in _METADATA_CALLS:
        assert out[call] == EPERM, (call, out)
    after = os.stat(data)
    assert (after.st_mode, after.st_mtime_ns, after.st_uid) == \
        (before.st_mode, before.st_mtime_ns, before.st_uid)


# --- 4. app files behind a link into a folder the child cannot search --------------------

LINK_HANDLER = '''import importlib

from trapeze.sandbox import app_modules


def handler(event, context):
    leaked = sorted(path for path, entry in app_modules._CODES.items()
                    if any("hunter2" in c for c in entry[2].co_consts if isinstance(c, str)))
    try:
        got = importlib.import_module("cfg").SECRET
    except Exception as exc:
        got = type(exc).__name__
    return {"leaked": leaked, "import": got}
'''


def test_link_into_a_closed_folder_is_not_compiled_for_the_child(tmp_path: Path) -> None:
    """cfg.py -> closed/settings.py, closed/ mode 0700: the zygote checked the link's
    folder only, compiled the target with its own rights and every child found the
    secret in the code object (review). Now every folder above the target is checked."""
    app = tmp_path / "app"
    (app / "closed").mkdir(parents=True)
    (app / "closed" / "settings.py").write_text("SECRET = 'hunter2-operator-only'\n")
    (app / "cfg.py").symlink_to("closed/settings.py")
    (app / "s.py").write_text(LINK_HANDLER)
    for p in (tmp_path, app):
        p.chmod(0o755)
    (app / "closed").chmod(0o700)
    assert "cfg" not in AppModules.compile(str(app)).specs
    spec = SandboxSpec("link", app, "s:handler", prefork=0, timeout_s=10)
    with Sandbox(spec) as s:
        out = s.run({}, {}, FakeMonitor())
    assert out.status == "ok", out
    assert out.value["leaked"] == []
    # As root the slot uid cannot search closed/ (the import system's stat() of the link
    # fails: not found); as an ordinary user the child is the files' owner (uid 0 of its
    # namespace) and may read them itself.
    if os.geteuid() == 0:
        assert out.value["import"] in ("PermissionError", "ModuleNotFoundError"), out
    else:
        assert out.value["import"] == "hunter2-operator-only", out


# --- 5. pathological app source: skipped by the zygote, never fatal -----------------------

def _deep_flags(depth: int) -> ast.Module:
    """`re.compile("x", re.I | re.I | ...)`, `depth` operands deep (built directly: the
    parser would refuse it, the analysis must not rely on that)."""
    flag = ast.Attribute(value=ast.Name(id="re", ctx=ast.Load()), attr="I", ctx=ast.Load())
    expr: ast.expr = flag
    for _ in range(depth):
        expr = ast.BinOp(left=expr, op=ast.BitOr(), right=flag)
    call = ast.Call(func=ast.Attribute(value=ast.Name(id="re", ctx=ast.Load()),
                                       attr="compile", ctx=ast.Load()),
                    args=[ast.Constant("x"), expr], keywords=[])
    return ast.Module(body=[ast.Expr(call)], type_ignores=[])


def test_pathological_app_source_is_left_to_the_child(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The zygote analyses app source it must never run: a RecursionError, MemoryError or
    re.error there made the zygote's start fail with an unclear error. Now the file is
    skipped (the child imports it itself) and the app starts."""
    # Flags nested deeper than the interpreter's recursion limit.
    assert app_modules._literal_patterns(_deep_flags(20_000)) == {("x", re.I)}

    app = tmp_path / "app"
    app.mkdir()
    (app / "good.py").write_text("import deep\n\ndef handler(event, context):\n"
                                 "    return [deep.P.flags & 2, deep.nested.__name__]\n")
    flags = " | ".join(["re.I"] * 900)
    nested = "(?:" * 2000 + "a" + ")" * 2000
    (app / "deep.py").write_text(f"import re\nP = re.compile('x', {flags})\n\n"
                                 f"def nested():\n    return re.compile({nested!r})\n")
    (app / "bad.py").write_text("BOOM = 1\n")
    for p in (tmp_path, app):
        p.chmod(0o755)

    real = app_modules._stdlib_imports

    def analysis_fails(tree: ast.AST) -> set[str]:
        if any(isinstance(n, ast.Name) and n.id == "BOOM" for n in ast.walk(tree)):
            raise RecursionError("maximum recursion depth exceeded")
        return real(tree)

    with monkeypatch.context() as m:
        m.setattr(app_modules, "_stdlib_imports", analysis_fails)
        modules = AppModules.compile(str(app))
    assert "bad" not in modules.specs and str(app / "bad.py") not in app_modules._CODES
    assert "good" in modules.specs and "deep" in modules.specs
    assert nested in {p for p, _f in modules.patterns}

    def compile_fails(*args: object, **kw: object) -> None:
        raise MemoryError

    with monkeypatch.context() as m:
        m.setattr(re, "compile", compile_fails)
        modules.preload()  # nothing raised

    # The real zygote: starts, and the child compiles what the zygote skipped.
    spec = SandboxSpec("deep", app, "good:handler", prefork=0, timeout_s=10)
    with Sandbox(spec) as s:
        out = s.run({}, {}, FakeMonitor())
    assert out.status == "ok", out
    assert out.value == [2, "nested"]
