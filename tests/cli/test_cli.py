"""The `trapeze` command as a user runs it: check, principal, invoke, logs, audit, errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

MINIMAL = Path(__file__).parents[2] / "examples" / "minimal"


def trapeze(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "trapeze.cli", *args], capture_output=True,
                          text=True, timeout=120)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def app(tmp_path: Path) -> Path:
    target = tmp_path / "minimal"
    shutil.copytree(MINIMAL, target)
    return target


def test_check_ok_and_errors(app: Path) -> None:
    assert trapeze("check", str(app)).stdout.strip() == "ok"
    manifest = app / "trapeze.toml"
    manifest.write_text(manifest.read_text().replace('function = "hello"', 'function = "nope"'))
    proc = trapeze("check", str(app), ok=False)
    assert proc.returncode == 1
    assert "trapeze.toml:" in proc.stderr and "nope" in proc.stderr


def test_principals_invoke_logs_audit(app: Path) -> None:
    store = f"sqlite:///{app / 'data' / 'app.db'}"
    added = trapeze("principal", "add", str(app), "bea", "--label", "user:bea", "--store", store)
    token = added.stdout.split("token (shown once, store it now): ")[1].strip()
    assert token.startswith("tz_")
    listed = trapeze("principal", "list", str(app), "--store", store).stdout
    assert "bea\tuser:bea" in listed
    # Tokens are stored only as hashes: the token text is nowhere in the database file.
    assert token.encode() not in (app / "data" / "app.db").read_bytes()
    second = trapeze("principal", "token", str(app), "bea", "--store", store).stdout
    assert "tz_" in second

    out = trapeze("invoke", str(app), "hello", "--event", '{"name": "bea"}', "--as", "bea",
                  "--store", store)
    result = json.loads(out.stdout)
    assert result["status"] == "ok" and result["value"] == {"greeting": "hello, bea"}

    bad = trapeze("invoke", str(app), "hello", "--label", "nosuch", "--store", store, ok=False)
    assert bad.returncode == 1 and "unknown label 'nosuch'" in bad.stderr
    missing = trapeze("invoke", str(app), "nofn", "--store", store, ok=False)
    assert json.loads(missing.stdout)["status"] == "refused"

    trapeze("logs", str(app), "--as", "bea", "--store", store)
    audit = trapeze("audit", str(app), "--label", "admin", "--store", store)
    assert audit.returncode == 0

    assert trapeze("principal", "remove", str(app), "bea", "--store", store).returncode == 0
    gone = trapeze("principal", "remove", str(app), "bea", "--store", store, ok=False)
    assert gone.returncode == 1 and "no principal named 'bea'" in gone.stderr


def test_usage_errors_are_clear(app: Path) -> None:
    proc = trapeze("principal", "add", str(app), "x", ok=False)
    assert proc.returncode == 2 and "needs --label" in proc.stderr
    proc = trapeze("check", str(app / "nowhere"), ok=False)
    assert proc.returncode == 1 and "nowhere" in (proc.stderr + proc.stdout)


def test_run_serves_and_shuts_down_cleanly_on_ctrl_c(app: Path) -> None:
    import signal
    import socket
    import time

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "trapeze.cli", "run", str(app), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"{url}/hello", params={"name": "x"}, timeout=10)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.2)
        assert r.status_code == 200 and r.json() == {"greeting": "hello, world"}
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert f"serving minimal on {url}" in out and "shutting down" in out


def test_run_refuses_manifest_tokens_beyond_loopback(app: Path) -> None:
    """Review: the manifest's plaintext tokens (development credentials: anyone who reads
    trapeze.toml can act as those principals) were accepted by a server on any address."""
    proc = trapeze("run", str(app), "--host", "0.0.0.0", "--port", "0", ok=False)
    assert proc.returncode != 0
    assert "plaintext tokens" in proc.stderr and "--allow-dev-tokens" in proc.stderr
    assert "ada" in proc.stderr  # names the principals
