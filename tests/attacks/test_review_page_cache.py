"""The page cache of files every child can read, as a channel between invocations (review,
session 6). Before the filter's rules on preadv2, fadvise64, madvise and mincore, a high
invocation evicted a file's pages (posix_fadvise DONTNEED) or loaded them, and a later low
one asked with preadv2(RWF_NOWAIT) whether they were cached: an error-free, reusable bit per
page, no clock needed. Now the probe always answers EOPNOTSUPP and eviction is ignored."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from attack_helpers import APP, make_sandbox

from fake_monitor import FakeMonitor
from trapeze.sandbox import Sandbox


@pytest.fixture(scope="module")
def sb() -> Iterator[Sandbox]:
    s = make_sandbox(handler="review3_attacks:handler", function="review3", timeout_s=10)
    yield s
    s.close()


@pytest.fixture
def shared_file() -> Path:
    """A file of the app's, which every invocation of every label may read. An existing one:
    the suite also runs as an ordinary user who may not write into the checkout."""
    path = APP / "attacks.py"
    os.sync()  # clean pages: only clean pages can be evicted
    return path


def run(sandbox: Sandbox, attack: str, path: Path) -> dict:
    out = sandbox.run({"attack": attack, "path": str(path)}, {}, FakeMonitor())
    assert out.status == "ok", out
    return out.value


def cached(path: Path) -> bool:
    """Whether the file's first page is in the page cache (asked by the unconfined host)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.preadv(fd, [bytearray(4096)], 0, os.RWF_NOWAIT)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def test_an_invocation_cannot_evict_shared_pages(sb: Sandbox, shared_file: Path) -> None:
    """The sending half: every eviction a process may ask for is accepted (advice may be
    ignored, so ordinary code carries on) and changes nothing."""
    shared_file.read_bytes()
    assert cached(shared_file)
    out = run(sb, "evict", shared_file)
    assert out == {"fadvise": 0, "fadvise_raw": 0, "madv_cold": 0, "madv_pageout": 0}, out
    assert cached(shared_file), "a confined invocation evicted a shared file's pages"


def test_an_invocation_cannot_ask_whether_pages_are_cached(sb: Sandbox,
                                                           shared_file: Path) -> None:
    """The receiving half: the same answers whether another invocation loaded the file or
    not. RWF_NOWAIT (also with junk in the register's upper half) gets the kernel's "not
    supported here", so a caller falls back to a plain read; mincore() is refused."""
    evict(shared_file)
    assert not cached(shared_file)
    cold = run(sb, "probe", shared_file)
    shared_file.read_bytes()  # what a high invocation's read would do
    assert cached(shared_file)
    warm = run(sb, "probe", shared_file)
    assert cold == warm, (cold, warm)
    assert cold["preadv2_nowait"] == errno.EOPNOTSUPP, cold
    assert cold["preadv2_nowait_raw"] == errno.EOPNOTSUPP, cold
    assert cold["mincore"] == errno.EPERM, cold
    assert cold["preadv2_plain"] == 0, cold  # preadv2 without the flag still reads
