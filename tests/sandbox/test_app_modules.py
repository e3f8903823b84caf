"""The zygote prepares the app's modules (compiled, found without a search, their standard
library preloaded) without ever running app code, and children import exactly what an
ordinary import would give them."""

from __future__ import annotations

import importlib.machinery
import os
import sys
import time
from pathlib import Path

from fake_monitor import FakeMonitor
from trapeze.sandbox import Sandbox, SandboxSpec
from trapeze.sandbox.app_modules import AppModules


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _app(root: Path, marker: Path) -> Path:
    """Files whose import-time code drops a marker (if it ever ran where it can write)."""
    app = root / "app"
    leak = (f"try:\n    open({str(marker)!r}, 'a').write(__name__ + '\\n')\n"
            "except OSError:\n    pass\n")
    _write(app / "json.py", leak)                     # shadows a standard module by name
    _write(app / "pkg" / "__init__.py", leak + "VALUE = 'package'\n")
    _write(app / "pkg" / "handlers.py",
           "import datetime\nimport email.utils\nfrom pkg import VALUE\n"
           "from ns.helper import helper\nimport json\n\n"
           "def handler(event, context):\n"
           "    return {'value': VALUE, 'helper': helper(), 'json': json.__name__,\n"
           "            'json_file': str(getattr(json, '__file__', '')),\n"
           "            'year': datetime.date(2024, 1, 2).year,\n"
           "            'addr': email.utils.parseaddr('A <a@b.c>')[1]}\n")
    _write(app / "ns" / "helper.py", "def helper():\n    return 'namespace'\n")
    _write(app / "msgpack" / "README.txt", "a data folder named like an installed package\n")
    _write(app / "broken.py", "def (:\n")
    _write(app / "top.py", "import this\nimport antigravity\nX = 1\n")
    return app


def test_compiles_without_running_and_indexes_like_the_import_system(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    app = _app(tmp_path, marker)
    modules = AppModules.compile(str(app))
    assert not marker.exists()  # compiled, never executed
    specs = modules.specs
    assert specs["pkg"].submodule_search_locations == [str(app / "pkg")]
    assert specs["pkg.handlers"].origin == str(app / "pkg" / "handlers.py")
    assert specs["ns"].loader is None and specs["ns"].submodule_search_locations == [
        str(app / "ns")]
    assert "ns.helper" in specs and "top" in specs and "json" in specs
    # A folder without __init__.py is a namespace package only where nothing else on the
    # path provides the name: `import msgpack` must still find the installed library.
    assert "msgpack" not in specs
    assert "broken" not in specs  # left to the child's import, which reports the error
    assert {"datetime", "email.utils", "json"} <= modules.stdlib
    assert not {"this", "antigravity"} & modules.stdlib


def test_preloads_the_standard_library_only(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    modules = AppModules.compile(str(_app(tmp_path, marker)))
    modules.stdlib.add("no_such_module_xyz")  # a failing import is left to the child
    modules.preload()
    assert sys.modules["json"].__file__ != str(tmp_path / "app" / "json.py")
    assert "email.utils" in sys.modules and "no_such_module_xyz" not in sys.modules
    assert "pkg" not in sys.modules and not marker.exists()


def test_module_programs_named_by_the_app_are_never_imported_by_the_zygote(
        tmp_path: Path) -> None:
    """The app decides which standard-library names the privileged zygote imports, so a
    name whose import runs a program is refused: `import ensurepip.__main__` in app source
    (never executed, only named) had the root zygote install pip into the interpreter."""
    app = tmp_path / "app"
    app.mkdir()
    (app / "handler.py").write_text(
        "import json, os.path\n"
        "def handler(event, context):\n"
        "    import ensurepip.__main__, venv.__main__, unittest.__main__, test.autotest\n"
        "    import lib2to3.main, pydoc\n"
        "    from email import utils\n"
    )
    modules = AppModules.compile(str(app))
    assert modules.stdlib == {"json", "os.path", "email"}


def test_finder_sits_where_path_finder_is(tmp_path: Path) -> None:
    modules = AppModules.compile(str(_app(tmp_path, tmp_path / "marker")))
    saved = list(sys.meta_path)
    try:
        modules.install_finder()
        at = sys.meta_path.index(importlib.machinery.PathFinder)
        assert sys.meta_path[at - 1].specs is modules.specs  # type: ignore[attr-defined]
    finally:
        sys.meta_path[:] = saved


def test_children_import_app_modules_and_never_the_zygote(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    app = _app(tmp_path, marker)
    spec = SandboxSpec(function="mods", app_dir=app, handler="pkg.handlers:handler", prefork=1)
    with Sandbox(spec) as sb:
        out = sb.run({}, {}, FakeMonitor())
        assert out.status == "ok", out
        assert out.value["value"] == "package" and out.value["helper"] == "namespace"
        assert out.value["year"] == 2024 and out.value["addr"] == "a@b.c"
        # The standard json (preloaded by the zygote, which never sees the app's json.py).
        assert out.value["json_file"] != str(app / "json.py")
        # The package's import-time code ran in the child only, where it cannot write
        # outside its private tmp: the marker never appears.
        assert not marker.exists()

        # A module changed after the zygote compiled it: the child uses the new source.
        handlers = app / "pkg" / "handlers.py"
        text = handlers.read_text().replace("'namespace'", "'namespace' + '!'")
        text = text.replace("'helper': helper()", "'helper': helper() + '!'")
        handlers.write_text(text)
        os.utime(handlers, ns=(time.time_ns(), time.time_ns() + 10**9))
        for _ in range(3):  # children prepared before the change imported it already
            out = sb.run({}, {}, FakeMonitor())
        assert out.status == "ok", out
        assert out.value["helper"] == "namespace!"


def test_literal_regular_expressions_are_compiled_ahead(tmp_path: Path) -> None:
    import re

    app = tmp_path / "app"
    _write(app / "pats.py",
           "import re\nA = re.compile(r'(?:zz)+q', re.I | re.M)\n"
           "def f(s):\n    return re.fullmatch('y{2,3}k', s) or re.compile(s) or "
           "re.compile('(', 0)\n")
    modules = AppModules.compile(str(app))
    assert modules.patterns == {("(?:zz)+q", re.I | re.M), ("y{2,3}k", 0), ("(", 0)}
    re.purge()
    modules.preload()  # the invalid "(" is skipped, not raised
    cache = re._cache  # type: ignore[attr-defined]
    assert (str, "(?:zz)+q", int(re.I | re.M)) in cache and (str, "y{2,3}k", 0) in cache


def test_precedence_below_the_top_and_data_folders_are_not_indexed(tmp_path: Path) -> None:
    app = tmp_path / "app"
    _write(app / "ns" / "sub.py", "X = 1\n")          # a module next to ...
    _write(app / "ns" / "sub" / "x.py", "Y = 2\n")    # ... a folder of the same name
    _write(app / "ns" / "deep" / "pkg" / "m.py", "Z = 3\n")
    for i in range(3):
        _write(app / "data" / f"d{i}" / "values.txt", "not code\n")
    modules = AppModules.compile(str(app) + "/")
    # The import system prefers the module sub.py to the namespace folder sub/.
    assert modules.specs["ns.sub"].origin == str(app / "ns" / "sub.py")
    assert "ns.sub.x" not in modules.specs
    assert modules.specs["ns.deep.pkg.m"].origin == str(app / "ns" / "deep" / "pkg" / "m.py")
    assert not any(name.startswith("data") for name in modules.specs)
    assert str(app / "data") not in modules.code_dirs


def test_files_a_child_could_not_read_are_not_compiled_for_it(tmp_path: Path) -> None:
    # The zygote reads with its own rights and a code object carries the file's text: a
    # private file or a link out of the app must not reach a child through the zygote.
    app = tmp_path / "app"
    outside = tmp_path / "outside.py"
    _write(outside, "SECRET = 'from outside the app'\n")
    _write(app / "hidden.py", "SECRET = 's3cr3t'\n")
    (app / "hidden.py").chmod(0o600)
    _write(app / "closed" / "inner.py", "SECRET = 'behind a closed folder'\n")
    (app / "closed").chmod(0o700)
    (app / "linked.py").symlink_to(outside)
    _write(app / "public.py", "OK = True\n")
    _write(app / "handler.py",
           "import importlib\n\ndef handler(event, context):\n"
           "    try:\n        return importlib.import_module(event['m']).SECRET\n"
           "    except Exception as e:\n        return type(e).__name__\n")
    spec = SandboxSpec(function="priv", app_dir=app, handler="handler:handler", prefork=1)
    with Sandbox(spec) as sb:
        for name in ("hidden", "linked", "closed.inner"):
            out = sb.run({"m": name}, {}, FakeMonitor())
            assert out.status == "ok", out
            if os.geteuid() == 0:  # a per-slot uid: the file's permissions stop it
                assert out.value in ("PermissionError", "ModuleNotFoundError"), (name, out)
            else:  # the same uid as the owner: Landlock stops the link out of the app
                assert name != "linked" or out.value != "from outside the app"
    modules = AppModules.compile(str(app))
    assert "public" in modules.specs
    assert not {"hidden", "closed", "closed.inner", "linked"} & set(modules.specs)
