"""Distributed build: one build of the build farm's code base (Lua 5.4, 34 translation
units) through the gateway, driven by examples/build_farm/build.py: one upload per source
file, one compile invocation per translation unit (the driver's default number of requests
in flight, the same in both modes), one link. The example is being written alongside this
harness: when its driver is missing or does not work here, the scenario reports itself as
not run, with the reason, instead of a row of numbers."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
from benchmarks.scenarios._common import EXAMPLES, NotAvailable, Session, settle

NAME = "Build farm: one build (Lua 5.4)"
APP = "build_farm"
DRIVER = EXAMPLES / "build_farm" / "build.py"


def _driver() -> ModuleType:
    if not DRIVER.exists():
        raise NotAvailable("examples/build_farm/build.py does not exist (yet)")
    spec = importlib.util.spec_from_file_location("build_farm_driver", DRIVER)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    # Registered before it runs: its dataclasses look their module up in sys.modules.
    sys.modules[spec.name] = mod
    try:
        spec.loader.exec_module(mod)
        for name in ("fetch_sources", "source_files", "check_toolchain", "build"):
            getattr(mod, name)
    except Exception as exc:
        raise NotAvailable(f"examples/build_farm/build.py does not load: "
                           f"{type(exc).__name__}: {exc}") from exc
    return mod


def setup(ifc: bool, quick: bool, workdir: Path) -> Session:
    from trapeze import App

    drv = _driver()
    try:
        drv.check_toolchain()
        files = drv.source_files(drv.fetch_sources())
    except Exception as exc:  # no compiler, no registry access, ...: say why, skip the row
        raise NotAvailable(f"{type(exc).__name__}: {exc}") from exc
    db = Path(tempfile.mkdtemp(dir=workdir)) / "farm.db"
    rt = App.load(drv.APP_DIR).start(store=f"sqlite:///{db}", http=True, ifc=ifc)
    token = rt.add_principal("ann", label="builder:ann")
    session = Session(rt, httpx.Client(base_url=rt.url), state={
        "driver": drv, "files": files, "token": token})
    settle(rt)
    return session


def run(session: Session) -> list[Any]:
    drv, rt = session.state["driver"], session.rt
    result = drv.build(rt.url, session.state["token"], session.state["files"], builder="ann")
    settle(rt)
    # What the builder gets back: every object's hash and every artefact's.
    return [sorted(result.objects.items()),
            sorted((n, hashlib.sha256(a).hexdigest()) for n, a in result.artefacts.items())]
