"""The monitor's own files stay out of every function's sight.

Found in review: the default store, ``<app>/.trapeze/app.db``, lies inside the app directory,
which children may read, so any confined function could read the raw SQLite file and its
write-ahead log — every label's facets. The zygote now covers the monitor's directories with
an empty tmpfs (and /dev/shm, whose files Landlock lets a child stat), and refuses a store
placed where covering it would hide what functions must read.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fake_monitor import FakeMonitor
from trapeze.runtime.app import App
from trapeze.sandbox import ConfinementUnavailable, Sandbox, SandboxSpec
from trapeze.sandbox.confine import PrivateDirExposed, private_dir_covers

MANIFEST = """
[app]
name = "store-files"

[labels]
public = ["secret"]
secret = []

[functions.put]
handler = "functions.py:put"

[functions.peek]
handler = "functions.py:peek"
"""

FUNCTIONS = '''
import os

from trapeze.guest import kv


def put(event, context):
    kv.put("t", "k", "TOPSECRET-VALUE")
    return "ok"


def peek(event, context):
    out = {}
    for path in event["paths"]:
        try:
            if os.path.isdir(path):
                out[path] = ["dir", sorted(os.listdir(path))]
            else:
                os.stat(path)
                with open(path, "rb") as fh:
                    out[path] = ["file", b"TOPSECRET" in fh.read()]
        except OSError as exc:
            out[path] = ["error", exc.errno]
    return out
'''

# Landlock already refuses listing /dev/shm; the cover also hides its files from stat().
SHM_PROBE = Path("/dev/shm/trapeze-test-store-files")
PEEK = [".trapeze", ".trapeze/app.db", ".trapeze/app.db-wal", str(SHM_PROBE)]


def _write_app(base: Path) -> Path:
    app = base / "app"
    app.mkdir()
    (app / "trapeze.toml").write_text(MANIFEST)
    (app / "functions.py").write_text(FUNCTIONS)
    for p in (base, app):
        p.chmod(0o755)  # functions run as unprivileged uids when the monitor is root
    (app / "functions.py").chmod(0o644)
    (app / "trapeze.toml").chmod(0o644)
    return app


@pytest.fixture(params=["tmp", "var-tmp"])
def app_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    # Under /tmp the app is bound back into each child's private /tmp; elsewhere it is seen
    # in place. Both paths must hide the store.
    if request.param == "tmp":
        yield _write_app(tmp_path)
        return
    base = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="trapeze-test-"))
    try:
        yield _write_app(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def shm_probe() -> Iterator[Path]:
    SHM_PROBE.write_bytes(b"TOPSECRET")
    yield SHM_PROBE
    SHM_PROBE.unlink(missing_ok=True)


def test_default_store_is_invisible_to_functions(app_dir: Path, shm_probe: Path) -> None:
    with App.load(app_dir).start(http=False) as rt:
        assert rt.invoke("put", {}, as_label="secret").ok
        assert (app_dir / ".trapeze" / "app.db").exists()
        out = rt.invoke("peek", {"paths": PEEK}, as_label="public")
    assert out.ok, out
    assert out.value == {
        ".trapeze": ["dir", []],
        ".trapeze/app.db": ["error", errno.ENOENT],
        ".trapeze/app.db-wal": ["error", errno.ENOENT],
        str(SHM_PROBE): ["error", errno.ENOENT],
    }


def test_store_file_among_readable_files_is_refused(app_dir: Path) -> None:
    # Covering the store's directory would cover the app itself: refuse, and say what to do.
    with pytest.raises(ConfinementUnavailable, match="private directories.*directory of its own"):
        App.load(app_dir).start(http=False, store=f"sqlite:///{app_dir / 'app.db'}")


def test_covered_in_user_namespace_mode_too(tmp_path: Path, shm_probe: Path) -> None:
    app = _write_app(tmp_path)
    data = app / ".trapeze"
    data.mkdir()
    (data / "app.db").write_bytes(b"TOPSECRET")
    spec = SandboxSpec("peek", app, "functions:peek", prefork=1, private_dirs=(str(data),))
    # As root, a zygote running as `nobody`; as an ordinary user, the default path.
    with Sandbox(spec, **({"zygote_uid": 65534} if os.geteuid() == 0 else {})) as sb:
        assert sb.mode == "userns"
        out = sb.run({"paths": PEEK[:2] + [str(SHM_PROBE)]}, {}, FakeMonitor())
    assert out.status == "ok", out
    assert out.value == {".trapeze": ["dir", []], ".trapeze/app.db": ["error", errno.ENOENT],
                         str(SHM_PROBE): ["error", errno.ENOENT]}


def test_which_private_dirs_are_covered(tmp_path: Path) -> None:
    app, data, other = tmp_path / "srv" / "app", tmp_path / "srv" / "app" / ".data", tmp_path / "x"
    for d in (data, other):
        d.mkdir(parents=True)
    readable = [str(app), "/usr"]
    assert private_dir_covers([str(data), str(other)], readable) == [str(data), str(other)]
    assert private_dir_covers([str(tmp_path / "missing")], readable) == []
    # A directory holding something readable cannot be covered: refused outside /tmp ...
    with pytest.raises(PrivateDirExposed, match="directory of its own"):
        private_dir_covers(["/usr/lib"], ["/usr/lib/python3"])
    # ... and needs nothing under /tmp, where a child sees only the readable paths ...
    assert private_dir_covers([str(tmp_path / "srv")], readable) == []
    # ... unless it is itself readable (the store file directly in an app under /tmp).
    with pytest.raises(PrivateDirExposed):
        private_dir_covers([str(app)], readable)
