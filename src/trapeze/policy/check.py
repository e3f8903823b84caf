"""``trapeze check APP_DIR``: validate an app and report in ``file:line: message`` form."""

from __future__ import annotations

import os
import sys
from typing import TextIO

from trapeze.policy.manifest import validate_manifest


def check_app(
    app_dir: str | os.PathLike[str], *, warnings_to: TextIO | None = sys.stderr
) -> list[str]:
    """Validate the app in ``app_dir``; return its errors (an empty list means ok).

    Each error reads ``path/trapeze.toml:LINE: message — write X instead``. Warnings do not
    fail the check; they are printed to ``warnings_to`` (stderr by default, None to silence)
    prefixed ``warning:``.
    """
    _, problems, warnings = validate_manifest(app_dir)
    if warnings_to is not None:
        for w in warnings:
            print(f"warning: {w}", file=warnings_to)
    return [str(p) for p in problems]
