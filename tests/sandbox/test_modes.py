"""The non-root path, missing mechanisms, and the development flag."""

from __future__ import annotations

import errno
import logging
import os

import pytest
from sandbox_helpers import make_spec

from fake_monitor import FakeMonitor
from trapeze.sandbox import ConfinementUnavailable, Sandbox, probe

NOBODY = 65534
# As root, the zygote drops to `nobody` before confining, exactly as in a non-root
# deployment; as an ordinary user that is simply the default path.
USERNS = {"zygote_uid": NOBODY} if os.geteuid() == 0 else {}


def test_unprivileged_zygote_uses_user_namespaces() -> None:
    # User + mount + network + PID namespaces created by an unprivileged process.
    with Sandbox(make_spec(prefork=1), **USERNS) as sb:
        assert sb.mode == "userns"
        mon = FakeMonitor()
        out = sb.run({"do": "guest_api"}, {}, mon)
        assert out.status == "ok", out
        assert out.value["got"] == {"v": 1}
        who = sb.run({"do": "whoami"}, {}, mon).value
        # Root of the zygote's user namespace, without capabilities; the init of its own
        # PID namespace, like every child.
        assert who["uid"] == 0
        assert sb.pidns_per_child and who["pid"] == 1
        imp = sb.run({"do": "imports"}, {}, mon)
        assert imp.status == "ok", imp
    # And the attacks are still stopped there.
    from pathlib import Path

    attack_app = Path(__file__).parent.parent / "attacks" / "app"
    from trapeze.sandbox import SandboxSpec

    spec = SandboxSpec("attack", attack_app, "attacks:handler", prefork=1)
    with Sandbox(spec, **USERNS) as sb:
        def attack(**ev: object) -> object:
            out = sb.run(ev, {}, FakeMonitor())
            assert out.status == "ok", out
            return out.value
        assert attack(attack="syscall", name="socket")["errno"] == errno.EPERM
        assert attack(attack="read_file", path="/etc/shadow")["errno"] == errno.EACCES
        assert attack(attack="write_file", path="/var/tmp/x")["errno"] == errno.EROFS
        assert attack(attack="syscall", name="mount")["errno"] == errno.EPERM
        assert attack(attack="syscall", name="unshare")["errno"] == errno.EPERM
        # The monitor is outside the child's PID namespace: it cannot even be named.
        assert attack(attack="signal_pids", pids=[os.getpid()])[str(os.getpid())]["errno"] == \
            errno.ESRCH
        # The zygote (pid 1 of the namespace around the child's own): nameless too.
        assert attack(attack="signal_pids", pids=[2])["2"]["errno"] == errno.ESRCH
        assert attack(attack="tmp_works") == "fine"
        int80 = sb.run({"attack": "int80"}, {}, FakeMonitor())
        assert int80.status == "crash" and "SIGSYS" in int80.error


@pytest.mark.parametrize(
    "mechanism,needle",
    [("seccomp", "CONFIG_SECCOMP_FILTER"), ("landlock", "lsm="),
     ("user namespaces", "unprivileged_userns_clone")],
)
def test_missing_mechanism_refuses(monkeypatch: pytest.MonkeyPatch, mechanism: str,
                                   needle: str) -> None:
    # Test-only hook (see probe.py): this machine has every mechanism, so simulate a gap.
    monkeypatch.setattr(probe, "_SIMULATE_MISSING", frozenset({mechanism}))
    sb = Sandbox(make_spec(), zygote_uid=NOBODY if mechanism == "user namespaces" else None)
    with pytest.raises(ConfinementUnavailable) as info:
        sb.start()
    assert info.value.mechanism == mechanism
    assert mechanism in str(info.value) and needle in str(info.value)


def test_unconfined_dev_runs_with_loud_warning(monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(probe, "_SIMULATE_MISSING", frozenset({"landlock", "seccomp"}))
    with caplog.at_level(logging.WARNING, logger="trapeze.sandbox"):
        with Sandbox(make_spec(prefork=1), unconfined_dev=True) as sb:
            out = sb.run({"do": "echo", "x": 1}, {}, FakeMonitor())
    assert out.status == "ok"
    assert "UNCONFINED DEVELOPMENT MODE" in caplog.text
