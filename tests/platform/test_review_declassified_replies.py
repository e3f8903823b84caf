"""Review: once a reply goes through a response declassifier, every outcome does.

The attack (found in review): a route whose response declassifier releases a constant. The
function raises to the label the declassifier covers, reads a secret, and then returns, fails,
or raises beyond the declassifier's max_label depending on one bit of it. The declassifier
used to see only returned values: a failure was a fixed 500 and the escaping raise sent the
202 "withheld" reply at once, so an anonymous caller read the secret bit by bit from the HTTP
status. Now the declassifier decides the reply for every outcome (it is told the status), and
an escaping raise sends nothing until the end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from trapeze import App
from trapeze.labels import Lattice
from trapeze.monitor import Invocation, MemoryAudit, Monitor
from trapeze.runtime.invoker import FunctionLimits, Invoker
from trapeze.store import open_store

MANIFEST = """\
[app]
name = "declassified-replies"
policy = "policy.py"

[labels]
bottom = ["public"]
public = ["admin"]
admin = ["top"]

[functions.probe]
handler = "functions/probe.py:probe"
timeout = 3

[functions.seed]
handler = "functions/probe.py:seed"
timeout = 3

[[routes]]
path = "/probe"
methods = ["GET"]
function = "probe"
anonymous = true

[declassifiers.ack]
channel = "response"
function = "constant_ack"
max_label = "admin"
bound = "bottom"
"""

POLICY = """\
def constant_ack(value, info):
    return {"ack": True}  # releases nothing of the value, nor of how the function ended
"""

FUNCTIONS = """\
from trapeze.guest import kv, label


def seed(event, context):
    kv.put("vault", "pin", event["pin"])
    return "seeded"


def probe(event, context):
    q = event.get("queryStringParameters") or {}
    bit = int(q["bit"])
    label.raise_to("admin")  # covered by the declassifier
    pin = kv.get("vault", "pin")
    if (pin >> bit) & 1:
        if q.get("how") == "escape":
            label.raise_to("top")  # beyond the declassifier's max_label
            return "escaped"
        if q.get("how") == "spin":
            while True:
                pass
        raise RuntimeError("the bit is set")
    return "whatever"
"""


def _app(root: Path) -> Path:
    app = root / "app"
    (app / "functions").mkdir(parents=True)
    (app / "trapeze.toml").write_text(MANIFEST)
    (app / "policy.py").write_text(POLICY)
    (app / "functions" / "probe.py").write_text(FUNCTIONS)
    for p in (app, app / "functions"):
        p.chmod(0o755)
    return app


def _replies(tmp_path: Path, secret: int) -> tuple[list[tuple[int, str]], list[str]]:
    app = App.load(_app(tmp_path / str(secret)))
    with app.start(store=f"sqlite:///{tmp_path / str(secret) / 'app.db'}", http=True) as rt:
        assert rt.invoke("seed", {"pin": secret}, as_label="admin").status == "ok"
        out = []
        with httpx.Client(base_url=rt.url, timeout=20) as client:
            for how in ("fail", "escape", "spin"):
                for bit in range(2):
                    r = client.get("/probe", params={"bit": bit, "how": how})  # anonymous
                    out.append((r.status_code, r.text))
        statuses = [e["detail"].get("status") for e in rt.audit(as_label="top")
                    if e["kind"] == "declassify"]
    return out, statuses


def test_an_anonymous_caller_learns_nothing_from_how_a_declassified_invocation_ended(
        tmp_path: Path) -> None:
    a, statuses_a = _replies(tmp_path, 0b01)
    b, statuses_b = _replies(tmp_path, 0b10)
    assert a == b, f"the replies depend on the secret:\n{a}\n{b}"
    assert all(reply == (200, '{"ack":true}') for reply in a), a
    # The declassifier saw every outcome (and each use is audited with it).
    assert sorted(statuses_a) == sorted(statuses_b) == sorted(
        ["ok", "error", "ok", "withheld", "ok", "timeout"])


# ------------------------------------------------------------------------------------------
# A failure of the runtime itself after a raise: its reply keeps the raised label, so that an
# engine (which invokes with bound top and acts at the label it is told) does not take it for
# a failure at the label the invocation started at.
class _Outcome:
    def __init__(self) -> None:
        self.status, self.value, self.error, self.log, self.duration_s = "ok", 1, None, "", 0.0


class _RaiseThenSucceed:
    def run(self, event: Any, context: dict[str, Any], on_call: Any) -> _Outcome:
        on_call("label.raise", {"label": "admin"})
        return _Outcome()


class _BrokenSink:
    """The log store failing (as PostgreSQL did on a NUL in a log line)."""

    def record_log(self, inv: Invocation, text: str) -> None:
        raise ValueError("the log store refused the text")


def test_a_runtime_failure_after_a_raise_is_reported_at_the_raised_label(
        tmp_path: Path) -> None:
    lattice = Lattice.from_hasse({"bottom": ["public"], "public": ["admin"], "admin": ["top"]})
    monitor = Monitor(lattice, open_store(f"sqlite:///{tmp_path / 's.db'}", lattice),
                      MemoryAudit())
    invoker = Invoker(monitor, {"f": _RaiseThenSucceed()}, {"f": FunctionLimits(5.0, 2, 0)},
                      _BrokenSink())
    try:
        engine_view = invoker.invoke("f", {}, label="public", response_bound="top")
        assert (engine_view.status, engine_view.label) == ("error", "admin")
        caller_view = invoker.invoke("f", {}, label="public", response_bound="public")
        assert caller_view.status == "withheld" and caller_view.label is None
    finally:
        invoker.close()
