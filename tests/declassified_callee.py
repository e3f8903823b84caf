"""The app behind the declassified-callee attacks (review, session 7): a public `outer`
synchronously invokes `inner`, which raises to admin under a response declassifier that
releases a constant, so that whatever `inner` then does on an admin bit (set by `seed`)
must reach `outer` only as {"ack": true}. Each test brings its own `inner` (and the channels
it needs). A unique module name: every suite shares sys.path."""

from __future__ import annotations

from pathlib import Path

from app_files import write_app

MANIFEST = """\
[app]
name = "declassified-callee"
policy = "policy.py"

[labels]
bottom = ["public"]
public = ["admin"]
admin = ["top"]

[functions.outer]
handler = "functions/f.py:outer"
timeout = 2

[functions.inner]
handler = "functions/f.py:inner"
timeout = 2

[functions.seed]
handler = "functions/f.py:seed"
timeout = 5

[declassifiers.ack]
channel = "response"
function = "constant_ack"
max_label = "admin"
bound = "bottom"
"""

POLICY = """\
def constant_ack(value, info):
    return {"ack": True}  # releases nothing of the value, nor of how the callee ended
"""

SEED_AND_OUTER = """

from trapeze.guest import functions as _functions, kv as _kv


def seed(event, context):
    _kv.put("vault", "bit", event["bit"])
    return "seeded"


def outer(event, context):
    try:
        got = _functions.invoke("inner", event)
    except Exception as e:
        got = type(e).__name__
    return {"inner": got}
"""


def write_callee_app(app: Path, inner_module: str, *, top: Path, channels: str = "") -> Path:
    """The app in `app`: `inner_module` (defining `inner`, with its imports) as its
    functions module, and `channels` (TOML tables) added to the manifest."""
    return write_app(app, MANIFEST + channels, {"f.py": inner_module + SEED_AND_OUTER},
                     POLICY, top=top)
