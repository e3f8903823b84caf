"""Review: audit entries and log lines carried the store-wide `seq` to their viewers.

The gap between two visible seqs counted the rows written at higher labels in between, and
high code decides that count (N refused requests make N audit entries): a low viewer read a
secret number off `trapeze audit` or `GET /_trapeze/audit`. A viewer now gets, per row, its
position among the rows it may see (the `cursor`), and pages with `after=` that cursor.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from trapeze import App
from trapeze.errors import InvalidArgument
from trapeze.monitor import MemoryAudit

_MANIFEST = """
[app]
name = "seqleak"

[labels]
bottom = ["public"]
public = ["user:*"]
"user:*" = ["admin"]
admin = ["top"]

[principals.alice]
label = "user:alice"

[principals.eve]
label = "public"

[functions.probe]
handler = "functions/f.py:probe"
timeout = 5

[functions.secret_holder]
handler = "functions/f.py:secret_holder"
timeout = 5
"""

_FUNCTIONS = '''
from trapeze.guest import http, kv


def probe(event, context):
    # At public: one log line and one audit entry (a refused egress) at public.
    print("probe")
    try:
        http.request("GET", "http://unlisted.invalid/")
    except Exception as e:
        return type(e).__name__
    return "no error"


def secret_holder(event, context):
    # At user:alice: as many audit entries and log lines as its secret says.
    for _ in range(int(kv.get("private", "pin"))):
        print("tick")
        try:
            http.request("GET", "http://unlisted.invalid/")
        except Exception:
            pass
    return "ok"
'''

# Fields that differ between any two runs whatever the secret (clock, random request ids).
_PER_RUN = ("time", "request_id")


@pytest.fixture
def app(tmp_path: Path) -> App:
    root = tmp_path / "app"
    (root / "functions").mkdir(parents=True)
    (root / "trapeze.toml").write_text(_MANIFEST)
    (root / "functions" / "f.py").write_text(_FUNCTIONS)
    return App.load(root)


def _strip(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in _PER_RUN} for r in rows]


def _eves_view(app: App, store: Path, secret: int) -> dict[str, Any]:
    """One run: public probe, alice's function with `secret`, public probe; what eve sees
    through the runtime API (the gateway's backend) and through the HTTP admin endpoints."""
    with app.start(store=f"sqlite:///{store}", http=True) as rt:
        token = rt.add_principal("eve", label="public")
        rt.view("user:alice").put("private", "pin", secret)
        assert rt.invoke("probe", {}, as_label="public").status == "ok"
        assert rt.invoke("secret_holder", {}, as_principal="alice").status == "ok"
        assert rt.invoke("probe", {}, as_label="public").status == "ok"
        assert rt.wait_idle()
        assert rt.url is not None
        with httpx.Client(base_url=rt.url, timeout=30,
                          headers={"Authorization": f"Bearer {token}"}) as client:
            http_audit = client.get("/_trapeze/audit").json()
            http_logs = client.get("/_trapeze/logs").json()
        view = {
            "audit": _strip(rt.audit(as_principal="eve")),
            "logs": _strip(rt.logs(as_principal="eve")),
            "audit_visible_to": _strip(rt.audit_visible_to("public")),
            "logs_visible_to": _strip(rt.logs_visible_to("public", "probe")),
            "http_audit": _strip(http_audit),
            "http_logs": _strip(http_logs),
        }
        # Sanity: the run did what it says (alice's entries exist, eve sees only public).
        top = rt.audit(as_label="top")
        assert sum(e["label"] == "user:alice" for e in top) == secret
    return view


def test_a_low_viewer_sees_the_same_audit_and_logs_whatever_high_code_wrote(
        app: App, tmp_path: Path) -> None:
    one = _eves_view(app, tmp_path / "one.db", 1)
    five = _eves_view(app, tmp_path / "five.db", 5)
    assert len(one["audit"]) == 2 and len(one["logs"]) == 2
    assert {e["label"] for e in one["audit"] + one["logs"]} == {"public"}
    assert one == five
    for rows in one.values():
        for row in rows:
            assert "seq" not in row


def _fill(rt: Any, high: int) -> None:
    """low 0, `high` rows at user:alice, low 1, then 3 more low rows (entries and lines)."""
    def low(i: int) -> None:
        rt.system.append_audit("refused", function="probe", request_id=f"low{i}",
                               label="public", detail={"i": i})
        rt.system.append_log("probe", f"low{i}", "public", f"low {i}")

    low(0)
    for j in range(high):
        rt.system.append_audit("refused", function="secret_holder", request_id=f"high{j}",
                               label="user:alice", detail={"j": j})
        rt.system.append_log("secret_holder", f"high{j}", "user:alice", f"high {j}")
    for i in range(1, 5):
        low(i)


def _paged(rt: Any, high: int) -> list[Any]:
    """Newest rows, then forward pages with `after=`: everything a follower sees."""
    _fill(rt, high)
    out: list[Any] = []
    for fetch in (lambda **kw: rt.audit_visible_to("public", **kw),
                  lambda **kw: rt.logs_visible_to("public", **kw)):
        newest = fetch(limit=2)
        out.append(_strip(newest))
        after = 0
        while True:
            page = fetch(after=after, limit=2)
            out.append(_strip(page))
            if not page:
                break
            after = page[-1]["cursor"]
        out.append(_strip(fetch(after=newest[0]["cursor"])))
    return out


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], str]:
    """A fresh store's URL per name, on each backend (PostgreSQL: one schema per name)."""
    if request.param == "postgresql":
        database = str(request.getfixturevalue("pg_database"))
        return lambda name: f"{database}?schema={name}"
    return lambda name: f"sqlite:///{tmp_path / name}.db"


def test_cursors_page_forward_and_count_only_what_the_viewer_sees(
        app: App, store_url: Callable[[str], str]) -> None:
    views = []
    for high in (0, 7):
        with app.start(store=store_url(f"p{high}")) as rt:
            views.append(_paged(rt, high))
            if high:
                # The top viewer sees every row, numbered among them.
                assert [r["cursor"] for r in rt.audit_visible_to("top")] == list(range(1, 13))
                with pytest.raises(InvalidArgument):
                    rt.audit_visible_to("public", after=-1)
                with pytest.raises(InvalidArgument):
                    rt.logs_visible_to("public", after=True)  # type: ignore[arg-type]
                assert rt.audit_visible_to("public", after=10**6) == []
    assert views[0] == views[1]
    audit_newest, *audit_pages = views[0][:5]
    assert [r["cursor"] for r in audit_newest] == [4, 5]
    assert [[r["cursor"] for r in p] for p in audit_pages] == [[1, 2], [3, 4], [5], []]
    assert [r["detail"]["i"] for p in audit_pages for r in p] == [0, 1, 2, 3, 4]
    assert [r["cursor"] for r in views[0][5]] == [5]


def test_the_http_admin_endpoints_take_a_cursor(app: App, tmp_path: Path) -> None:
    with app.start(store=f"sqlite:///{tmp_path / 'h.db'}", http=True) as rt:
        token = rt.add_principal("eve", label="public")
        _fill(rt, 3)
        assert rt.url is not None
        with httpx.Client(base_url=rt.url, timeout=30,
                          headers={"Authorization": f"Bearer {token}"}) as client:
            rows = client.get("/_trapeze/audit").json()
            assert [r["cursor"] for r in rows] == [1, 2, 3, 4, 5]
            later = client.get("/_trapeze/audit", params={"after": "3"}).json()
            assert [r["detail"]["i"] for r in later] == [3, 4]
            logs = client.get("/_trapeze/logs", params={"after": "4", "function": "probe"})
            assert [r["text"] for r in logs.json()] == ["low 4"]
            for bad in ("-1", "x", "1.5", "\u00b2", "9" * 5000):
                r = client.get("/_trapeze/audit", params={"after": bad})
                assert r.status_code == 400, (bad, r.text)


class _Inv:
    def __init__(self, label: str) -> None:
        self.label, self.function, self.request_id = label, "f", "r"


def _memory_view(high: int) -> list[dict[str, Any]]:
    audit = MemoryAudit("public")
    low: Any = _Inv("public")
    hi: Any = _Inv("user:alice")
    audit.record("refused", low, {"i": 0})
    for _ in range(high):
        audit.record("refused", hi, {})
    audit.record("refused", low, {"i": 1})
    rows = audit.visible_to(lambda label: label == "public")
    assert audit.visible_to(lambda label: label == "public", after=1)[0]["detail"] == {"i": 1}
    return _strip(rows)


def test_the_memory_audit_numbers_entries_per_viewer() -> None:
    assert _memory_view(0) == _memory_view(4)
    assert [r["cursor"] for r in _memory_view(4)] == [1, 2]
