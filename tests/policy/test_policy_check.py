"""`check_app` (what `trapeze check` prints) and `load_policy_module` (used by the monitor)."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from policy_helpers import NOT_A_LATTICE, WORKFLOW, line_of

from trapeze.errors import ConfigError
from trapeze.policy import check_app, load_manifest, load_policy_module

App = Callable[..., Path]
REPO = Path(__file__).resolve().parents[2]

_LINE = re.compile(r"^(?P<file>.+trapeze\.toml):(?P<line>\d+): (?P<msg>.+) — write .+ instead$")


def test_check_ok_for_minimal_example() -> None:
    assert check_app(REPO / "examples" / "minimal", warnings_to=None) == []


def test_check_reports_file_line_and_fix(app: App) -> None:
    root = app("""
        [app]
        name = "x"
        [labels]
        chain = ["low", "high"]
        [functions.f]
        handler = "functions/a.py:handler"
        timeout = 1000
    """)
    (message,) = check_app(root, warnings_to=None)
    m = _LINE.match(message)
    assert m, message
    assert Path(m["file"]) == root / "trapeze.toml"
    assert int(m["line"]) == line_of(root, "timeout = 1000")
    assert "'timeout' = 1000" in m["msg"]


def test_check_keeps_a_relative_path_relative(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    root = app('[app]\nname = "x"\n')
    monkeypatch.chdir(root.parent)
    (message,) = check_app(root.name, warnings_to=None)
    assert message.startswith(f"{root.name}/trapeze.toml:1: the manifest has no [labels]")


def test_check_prints_warnings_separately(app: App) -> None:
    root = app(NOT_A_LATTICE + WORKFLOW, {"w.json": '{"StartAt": "s", "States": {"s": {}}}'})
    out = io.StringIO()
    assert check_app(root, warnings_to=out) == []
    lines = out.getvalue().splitlines()
    assert lines and all(line.startswith("warning: ") for line in lines)
    assert f"trapeze.toml:{line_of(root, '[labels]')}: " in lines[0]


def test_load_policy_module_gives_declared_callables() -> None:
    m = load_manifest(REPO / "examples" / "minimal")
    first = load_policy_module(m)
    second = load_policy_module(m)
    assert set(first) == {"greeting"}
    info = {"function": "hello", "history": [], "status": "ok"}
    assert first["greeting"]({"greeting": "hi"}, info) == {"greeting": "hi"}
    with pytest.raises(ValueError):
        first["greeting"]({"secret": 1}, info)
    with pytest.raises(ValueError):  # another function's reply
        first["greeting"]({"greeting": "hi"}, {**info, "function": "other"})
    # Each load is a fresh module: no state shared between two starts.
    assert first["greeting"].__module__ != second["greeting"].__module__


def test_load_policy_module_reports_import_failure(app: App) -> None:
    root = app(
        """
        [app]
        name = "x"
        policy = "policy.py"
        [labels]
        chain = ["low", "high"]
        [declassifiers.d]
        channel = "response"
        function = "release"
        max_label = "high"
        bound = "low"
        """,
        {"policy.py": "def release(v, i):\n    return v\nraise RuntimeError('boom')\n"},
    )
    m = load_manifest(root)  # parsing does not run it
    with pytest.raises(ConfigError, match="boom"):
        load_policy_module(m)


def test_complete_example_in_docs_loads(app: App) -> None:
    doc = (REPO / "docs" / "manifest.md").read_text()
    section = doc.split("## A complete example", 1)[1]
    toml = section.split("```toml\n", 1)[1].split("```", 1)[0]
    flow = '{"StartAt": "A", "States": {"A": {"Type": "Pass", "End": true}}}'
    root = app(toml, {
        "functions/event_writer.py": "def handler(event, context): ...\n",
        "functions/processor.py": "def handler(event, context): ...\n",
        "policy.py": "def release_email(value, info): ...\n",
        "workflows/acquire_photo.json": flow,
    })
    m = load_manifest(root)
    assert m.name == "hello-retail"
    assert m.functions["event_writer"].prefork == 2
    assert m.declassifiers["assignment_email"].channel == "email"


def test_console_example_in_docs(app: App) -> None:
    root = app("""
        [app]
        name = "x"
        [labels]
        chain = ["low", "high"]
        [functions.writer]
        handler = "functions/a.py:handler"
        timout = 3
        [[routes]]
        path = "/w"
        function = "writr"
    """)
    errors = [e.split(": ", 1)[1] for e in check_app(root, warnings_to=None)]
    doc = (REPO / "docs" / "manifest.md").read_text()
    for e in errors:
        assert e in doc
    assert len(errors) == 2


def test_a_planted_bytecode_cache_never_replaces_the_policy(tmp_path: Path) -> None:
    """Review: the policy module was imported through the import system, which runs
    <app>/__pycache__/policy.*.pyc instead of policy.py whenever the cache's recorded mtime
    and size match: whoever could write the app directory replaced the reviewed policy."""
    import importlib.util
    import os
    import py_compile
    import shutil

    root = tmp_path / "minimal"
    shutil.copytree(REPO / "examples" / "minimal", root)
    policy = root / "policy.py"
    good, st = policy.read_bytes(), policy.stat()
    name = load_manifest(root).declassifiers["greeting"].function
    evil = f"def {name}(value, info):\n    return 'PLANTED'\n".encode()
    evil += b"#" * (len(good) - len(evil) - 1) + b"\n"
    policy.write_bytes(evil)
    os.utime(policy, ns=(st.st_atime_ns, st.st_mtime_ns))
    py_compile.compile(str(policy), cfile=importlib.util.cache_from_source(str(policy)),
                       invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)
    policy.write_bytes(good)  # the reviewed source is back, same size and mtime
    os.utime(policy, ns=(st.st_atime_ns, st.st_mtime_ns))
    released = load_policy_module(load_manifest(root))["greeting"]
    try:
        answer = released({"greeting": "hi"}, {"function": "hello", "history": []})
    except Exception:  # the reviewed policy may refuse this call; the planted one never does
        answer = None
    assert answer != "PLANTED"
