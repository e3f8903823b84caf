"""Ordinary code works confined, and the guest API behaves as documented."""

from __future__ import annotations

import logging
import os

import pytest
from sandbox_helpers import make_spec

from fake_monitor import FakeMonitor
from trapeze.errors import GUEST_ERROR_KINDS
from trapeze.guest import errors as guest_errors
from trapeze.sandbox import Sandbox
from trapeze.sandbox.baseline import WarmWorker


def run(sb: Sandbox, do: str, monitor: FakeMonitor | None = None, **event: object):
    out = sb.run({"do": do, **event}, {}, monitor or FakeMonitor())
    assert out.status == "ok", out
    return out.value


def test_runs_confined(sandbox: Sandbox) -> None:
    who = run(sandbox, "whoami")
    assert sandbox.mode == ("root" if os.geteuid() == 0 else "userns")
    # The init of its own PID namespace, executables or not (tests/attacks:
    # test_review_shared_counters.py, grandchild, signals).
    assert sandbox.pidns_per_child and who["pid"] == 1
    if os.geteuid() == 0:
        # A per-slot unprivileged uid, which the child sees as the overflow uid: it runs in
        # a user namespace of its own that maps nothing (test_review_shared_counters.py),
        # where the kernel lets a slot uid create one; else the slot uid itself.
        assert who["uid"] == 65534 if sandbox.hide_uid else who["uid"] >= 2_000_000_000
    assert who["cwd"] == str(sandbox.spec.app_dir)


def test_imports_after_confinement(sandbox: Sandbox) -> None:
    assert run(sandbox, "imports") == ["3.3", "1/3", "1"]


def test_threads(sandbox: Sandbox) -> None:
    assert run(sandbox, "threads") == [x * x for x in range(8)]


def test_numpy_preloaded(sandbox: Sandbox) -> None:
    a = run(sandbox, "numeric")
    b = run(sandbox, "numeric")
    assert a["sum"] == 66.0 and a["dot"] == [14.0, 38.0, 62.0]
    assert a["rand"] != b["rand"]  # each child reseeds: siblings do not share a stream


def test_numpy_imported_after_confinement() -> None:
    with Sandbox(make_spec(prefork=1)) as sb:
        assert run(sb, "numeric")["sum"] == 66.0


def test_stdlib(sandbox: Sandbox) -> None:
    out = run(sandbox, "stdlib")
    again = run(sandbox, "stdlib")
    # `random` was seeded in the zygote (tempfile imports it) and the zygote forks without
    # CPython's at-fork hooks: each child must reseed, or siblings would draw the same bits.
    assert out.pop("draw") != again.pop("draw")
    assert out == {"json": {"a": [1, 2]}, "date": "2024-02-29", "now_ok": True,
                   "random": True, "sha": "ba7816bf"}


def test_reads_app_data_files(sandbox: Sandbox) -> None:
    assert run(sandbox, "data_file") == "hello from a data file"


def test_declared_executable_runs_but_not_sh() -> None:
    with Sandbox(make_spec(executables=("/bin/true",), prefork=1)) as sb:
        out = run(sb, "run_exe", exe="/bin/true")
    assert out == {"true": 0, "sh": 13}  # /bin/sh: EACCES from Landlock's execute rule


def test_guest_api_and_errors(sandbox: Sandbox, caplog: pytest.LogCaptureFixture) -> None:
    mon = FakeMonitor(label="client:alice")
    with caplog.at_level(logging.ERROR, logger="trapeze.sandbox"):
        out = run(sandbox, "guest_api", mon)
    assert out["got"] == {"v": 1}
    assert out["flow"] == "cannot lower the label from public to bottom"
    # Any other exception in the monitor: a generic error, never its text.
    assert out["internal"] == ["TrapezeError", "internal error"]
    assert "secret internal detail" in caplog.text
    assert out["label"] == "client:alice" and out["fn"] == "ordinary" and out["remaining"]
    assert out["arn"] == "arn:trapeze:function:ordinary"
    assert out["env"] == {"STAGE": "test"}  # exactly the manifest's variables


def test_guest_error_kinds_mirror_the_monitor() -> None:
    for kind in GUEST_ERROR_KINDS:
        assert guest_errors.ERROR_CLASSES[kind].kind == kind
        assert guest_errors.ERROR_CLASSES[kind].__name__ in (kind, "TrapezeError")


def test_handler_exception(sandbox: Sandbox) -> None:
    out = sandbox.run({"do": "raises"}, {}, FakeMonitor())
    assert out.status == "error"
    assert out.error.startswith("ValueError: bad input 42") and "Traceback" in out.error


def test_non_json_result(sandbox: Sandbox) -> None:
    out = sandbox.run({"do": "bad_result"}, {}, FakeMonitor())
    assert out.status == "error" and "of type set is not JSON-compatible" in out.error


def test_non_json_event_rejected(sandbox: Sandbox) -> None:
    with pytest.raises(Exception, match="event contains a set"):
        sandbox.run({"do": "echo", "x": {1}}, {}, FakeMonitor())


def test_large_messages_round_trip(sandbox: Sandbox) -> None:
    blob = os.urandom(5 * 1024 * 1024)  # far above SOCK_SEQPACKET's ~200 KB
    with Sandbox(make_spec(handler="ordinary:echo", prefork=1)) as sb:
        res = sb.run(blob, {}, FakeMonitor())
    assert res.status == "ok" and res.value == blob
    assert res.log == f"printed {len(blob)}\n"


def test_log_is_capped(sandbox: Sandbox) -> None:
    out = sandbox.run({"do": "chatty", "lines": 10000}, {}, FakeMonitor())
    assert out.status == "ok"
    assert len(out.log) < sandbox.spec.max_log_bytes + 200
    assert "[trapeze: log truncated, 737856 bytes dropped]" in out.log


def test_concurrent_runs(sandbox: Sandbox) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda i: sandbox.run({"do": "echo", "i": i}, {}, FakeMonitor()),
                             range(40)))
    assert [o.value["i"] for o in outs] == list(range(40))
    assert len({o.pid for o in outs}) == 40  # one process per invocation


def test_warm_worker_baseline() -> None:
    with WarmWorker(make_spec()) as ww:
        a = ww.run({"do": "guest_api"}, {}, FakeMonitor())
        b = ww.run({"do": "whoami"}, {}, FakeMonitor())
        c = ww.run({"do": "whoami"}, {}, FakeMonitor())
    assert a.status == "ok" and a.value["got"] == {"v": 1}
    assert b.value["pid"] == c.value["pid"] != 1  # one warm process, no confinement
