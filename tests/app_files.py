"""Writing a throwaway app directory for a test (a unique module name: every suite shares
sys.path)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def write_app(app: Path, manifest: str, functions: Mapping[str, str],
              policy: str | None = None, *, top: Path) -> Path:
    """`app`/trapeze.toml, `app`/functions/<name> for each of `functions`, and policy.py if
    given. As root, children run as slot uids that own nothing: `app` and the folders
    above it up to `top` (the test's tmp_path) are made readable by others (0o755), as a
    deployment package is."""
    if app != top and top not in app.parents:
        raise ValueError(f"{top} is not a folder above {app}")
    (app / "functions").mkdir(parents=True)
    (app / "trapeze.toml").write_text(manifest)
    for name, text in functions.items():
        (app / "functions" / name).write_text(text)
    if policy is not None:
        (app / "policy.py").write_text(policy)
    folder = app / "functions"
    while True:
        folder.chmod(0o755)
        if folder == top:
            return app
        folder = folder.parent
