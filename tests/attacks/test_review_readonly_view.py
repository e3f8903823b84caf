"""Review: reading a shared file must leave no trace another invocation can see.

Landlock refused children every write outside their tmp, but a read on a writable mount
still updated the file's access time (relatime: when it was older than a day, or than the
file's mtime), which any later or concurrent invocation, at any label, could stat(): a bit
per shared file. The zygote now makes every mount of its namespace read-only (the slots'
tmpfs are mounted later, writable), and a read-only mount records no access time.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from fake_monitor import FakeMonitor
from trapeze.sandbox import Sandbox, SandboxSpec

HANDLER = """\
def handler(event, context):
    with open(event["path"], "rb") as fh:
        return len(fh.read())
"""


def test_a_read_leaves_no_access_time() -> None:
    # Outside /tmp: roots under /tmp are bound read-only into the child's tmp anyway.
    app = Path(tempfile.mkdtemp(prefix="trapeze-atime-", dir="/var/tmp"))
    try:
        app.chmod(0o755)
        (app / "h.py").write_text(HANDLER)
        data = app / "shared.txt"
        data.write_text("what every invocation may read")
        data.chmod(0o644)
        stale = time.time() - 3 * 86400  # relatime would refresh an access time this old
        os.utime(data, (stale, stale))
        with Sandbox(SandboxSpec("f", app, "h:handler", prefork=1)) as sb:
            out = sb.run({"path": str(data)}, {}, FakeMonitor())
        assert out.status == "ok" and out.value == len("what every invocation may read"), out
        assert abs(os.stat(data).st_atime - stale) < 1, "the read left an access time"
    finally:
        shutil.rmtree(app, ignore_errors=True)
