"""Per-slot uid blocks are exclusive across sandboxes and processes on one machine.

Found in review: blocks were chosen from the pid modulo 256, so two monitors on one host
(several Ray nodes on one machine) could give two live children the same uid.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from trapeze.sandbox import sandbox as sandbox_module
from trapeze.sandbox.sandbox import UID_BLOCK, _claim_uid_block

CLAIM_AND_PRINT = (
    "import sys; import trapeze.sandbox.sandbox as s; s.UID_LOCK_DIRS = (sys.argv[1],); "
    "print(s._claim_uid_block()[0])"
)


def test_uid_blocks_are_exclusive_while_held(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # Lock files in a folder of the test's own: the mechanism (flock per block) is the same
    # whoever runs it, so this runs as an ordinary user too.
    monkeypatch.setattr(sandbox_module, "UID_LOCK_DIRS", (str(tmp_path / "blocks"),))
    base, fd = _claim_uid_block()
    second, fd2 = _claim_uid_block()
    try:
        assert base != second and base % UID_BLOCK == second % UID_BLOCK == 0
        # Another process gets neither of them.
        other = int(subprocess.run(
            [sys.executable, "-c", CLAIM_AND_PRINT, str(tmp_path / "blocks")], check=True,
            capture_output=True, text=True).stdout)
        assert other not in (base, second)
    finally:
        os.close(fd2)
    os.close(fd)
    # Released blocks are claimed again (the pid-derived starting point is the same).
    again, fd3 = _claim_uid_block()
    os.close(fd3)
    assert again == base
