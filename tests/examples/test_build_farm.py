"""build_farm end to end through the HTTP gateway: a real C code base (Lua 5.4.4, fetched from
the Debian package registry) compiled with one confined invocation per translation unit.

Two builders (ann with -DLUA_COMPAT_5_3, bob without) build at the same time under the same
build name, so their sources, objects and artefacts share every key; each gets a working Lua
built from its own flags, and neither can read, list or compile against the other's files —
also when the compile function is compromised. The IFC-off baseline runs the same functions
and produces the same objects.

No source is vendored: the download is cached (TRAPEZE_BUILD_FARM_CACHE, default
~/.cache/trapeze/build_farm). If the registry is unreachable the tests fail with the
registry's message — a skipped build farm would prove nothing.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from trapeze import App

APP_DIR = Path(__file__).resolve().parents[2] / "examples" / "build_farm"
# Optimizing less than the CLI's -O2 keeps the whole module well under a minute on a loaded
# two-core machine; the security properties do not depend on it.
OPT = "-O1"


def _driver() -> ModuleType:
    # Loaded by path under its own name: "build" would shadow (or be shadowed by) PyPA's
    # `build` package.
    spec = importlib.util.spec_from_file_location("build_farm_driver", APP_DIR / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while defining
    spec.loader.exec_module(module)
    return module


bf = _driver()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    bf.check_toolchain()
    # bf.FetchError propagates: the test errors with the registry's message, never skips.
    return bf.source_files(bf.fetch_sources(bf.LUA))


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory, files: dict[str, bytes]) -> Iterator[Any]:
    store = tmp_path_factory.mktemp("build_farm_store") / "farm.db"
    with App.load(APP_DIR).start(store=f"sqlite:///{store}", http=True) as rt:
        yield rt


@pytest.fixture(scope="module")
def tokens(farm: Any) -> dict[str, str]:
    return {who: farm.add_principal(who, label=f"builder:{who}") for who in bf.BUILDERS}


@pytest.fixture(scope="module")
def built(farm: Any, tokens: dict[str, str], files: dict[str, bytes]) -> dict[str, Any]:
    """Both builders build concurrently, under the same build name "lua"."""
    results, _ = bf.build_all(farm.url, tokens, files, same_build_id=True, opt=OPT, jobs=6)
    return results


@pytest.fixture
def client(farm: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=farm.url, timeout=120) as c:
        yield c


def test_each_builder_gets_a_working_lua_built_with_its_own_flags(
    built: dict[str, Any], files: dict[str, bytes], tmp_path: Path
) -> None:
    units = sorted(n for n in files if n.endswith(".c"))
    assert len(units) == 34
    for who, compat in (("ann", True), ("bob", False)):
        r = built[who]
        assert r.build == "lua" and sorted(r.objects) == [u[:-2] + ".o" for u in units]
        assert set(r.artefacts) == {"liblua.a", "lua", "luac"}
        # Checked outside the sandbox: nm on the library, and the interpreter really runs.
        seen = bf.verify(r, tmp_path / who)
        assert seen["version"] == "Lua 5.4" and seen["hex"] == "bef0"
        assert seen["luac"] == "Lua 5.4.4" and seen["symbols"] > 100
        assert seen["math_pow"] is compat  # LUA_COMPAT_5_3 brings math.pow back
    # Same keys, different contents: the math library was compiled differently.
    assert built["ann"].objects["lmathlib.o"] != built["bob"].objects["lmathlib.o"]
    assert built["ann"].objects["lzio.o"] == built["bob"].objects["lzio.o"]


def test_builders_never_see_each_others_files_through_the_gateway(
    built: dict[str, Any], tokens: dict[str, str], client: httpx.Client
) -> None:
    for who in ("ann", "bob"):
        listing = client.get("/builds/lua", headers=bearer(tokens[who])).json()
        # Exactly its own objects, though the other builder's sit under the same keys.
        assert {k: v["sha256"] for k, v in listing["objects"].items()} == built[who].objects
        assert {k: v["sha256"] for k, v in listing["artefacts"].items()} == {
            k: sha(v) for k, v in built[who].artefacts.items()}
        r = client.get("/builds/lua/objects/lmathlib.o", headers=bearer(tokens[who]))
        assert r.status_code == 200 and sha(r.content) == built[who].objects["lmathlib.o"]
    # Anonymous callers run at the bottom label and see no build at all.
    empty = {"build": "lua", "sources": {}, "headers": {}, "objects": {}, "artefacts": {}}
    assert client.get("/builds/lua").json() == empty
    r = client.get("/builds/lua/artefacts/lua")
    assert r.status_code == 404 and r.json() == {"error": "no artefacts lua in build lua"}
    assert client.post("/compile", json={"build": "lua", "source": "lvm.c"}).status_code == 401


def test_a_compile_at_one_label_cannot_include_the_other_builders_header(
    built: dict[str, Any], tokens: dict[str, str], client: httpx.Client
) -> None:
    probe = b'#include "ann_only.h"\nint probe(void) { return ANN_SECRET; }\n'
    up = {"build": "lua", "path": "probe.c", "content": base64.b64encode(probe).decode()}
    for who in ("ann", "bob"):
        assert client.post("/sources", json=up, headers=bearer(tokens[who])).status_code == 201
    secret = {"build": "lua", "path": "ann_only.h",
              "content": base64.b64encode(b"#define ANN_SECRET 4242\n").decode()}
    assert client.post("/sources", json=secret, headers=bearer(tokens["ann"])).status_code == 201
    job = {"build": "lua", "source": "probe.c", "cflags": ["-O1"]}
    ann = client.post("/compile", json=job, headers=bearer(tokens["ann"]))
    assert ann.status_code == 200, ann.text
    bob = client.post("/compile", json=job, headers=bearer(tokens["bob"]))
    # For bob's compile the header does not exist: gcc inside the sandbox says so.
    assert bob.status_code == 422 and "ann_only.h: No such file" in bob.json()["diagnostics"]
    r = client.get("/builds/lua/headers/ann_only.h", headers=bearer(tokens["bob"]))
    assert r.status_code == 404


def test_the_store_is_faceted_per_builder(built: dict[str, Any], farm: Any) -> None:
    for who in ("ann", "bob"):
        view = farm.view(f"builder:{who}")
        assert sha(view.get("objects", "lua/lmathlib.o")) == built[who].objects["lmathlib.o"]
        assert sha(view.get("artefacts", "lua/lua")) == sha(built[who].artefacts["lua"])
    facets = farm.view("top").facets("objects", "lua/lmathlib.o")
    assert sorted(lbl for _, lbl in facets) == ["builder:ann", "builder:bob"]
    for low in ("bottom", "public"):
        for table in ("sources", "headers", "objects", "artefacts"):
            assert farm.view(low).scan(table) == []


INJECTED = '''

def handler(event, context):  # injected: a compromised compile function
    import base64 as _b64, hashlib as _h, subprocess as _sp
    from trapeze.guest import label as _label
    req = request_body(event)
    seen = {t: {k: _h.sha256(v).hexdigest() for k, v in scan_all(t, "")
                if isinstance(v, bytes)}
            for t in ("sources", "headers", "objects", "artefacts")}
    tries = {}
    def attempt(name, fn):
        try:
            tries[name] = "succeeded: " + repr(fn())[:200]
        except BaseException as e:
            tries[name] = type(e).__name__ + ": " + str(e)[:200]
    # Go around the monitor: read the store's file, directly and through the compiler.
    attempt("open", lambda: open(req["store"], "rb").read(64))
    attempt("gcc", lambda: _sp.run([GCC, "-E", "-x", "c", req["store"]], capture_output=True,
                                   check=True).stdout[:64])
    attempt("sh", lambda: _sp.run(["/bin/sh", "-c", "id"], capture_output=True).stdout)
    # Exfiltrate: to a lower label, then into the store and the reply.
    attempt("lower", lambda: _label.raise_to("bottom"))
    kv.put("loot", "all", seen)
    kv.put("loot", "ann_only", kv.get("headers", "lua/ann_only.h"))
    return reply(200, {"seen": seen, "tries": tries})
'''


def test_a_compromised_compile_function_cannot_move_the_other_builders_data(
    built: dict[str, Any], farm: Any, tmp_path: Path
) -> None:
    app_dir = tmp_path / "app"
    shutil.copytree(APP_DIR, app_dir, ignore=shutil.ignore_patterns(".trapeze", "__pycache__"))
    with (app_dir / "functions" / "compile.py").open("a") as f:
        f.write(INJECTED)
    store = farm.store_url[len("sqlite:///"):]
    event = {"build": "lua", "source": "lvm.c", "store": store}
    # The injected code runs against the same store: anonymously (first, because a write at
    # the bottom label replaces every facet above it), then as bob through the gateway.
    with App.load(app_dir).start(store=farm.store_url, http=True) as evil:
        anon = evil.invoke("compile", event, as_label="bottom")
        token = evil.add_principal("bob", label="builder:bob")
        with httpx.Client(base_url=evil.url, timeout=120) as c:
            r = c.post("/compile", json=event, headers=bearer(token))
    assert r.status_code == 200, r.text
    out = r.json()
    ann, bob = built["ann"], built["bob"]
    # It finds bob's objects, all of them, and nothing else (bob's probe.c never compiled).
    assert out["seen"]["objects"] == {f"lua/{k}": v for k, v in bob.objects.items()}
    everything_of_ann = {*ann.objects.values(), *(sha(a) for a in ann.artefacts.values()),
                         sha(b"#define ANN_SECRET 4242\n")} - {
        *bob.objects.values(), *(sha(a) for a in bob.artefacts.values())}
    assert everything_of_ann and not any(h in r.text for h in everything_of_ann)
    assert "lua/ann_only.h" not in r.text
    tries = out["tries"]
    # The store's file is not in the sandbox's view of the filesystem (private /tmp; Landlock
    # elsewhere), gcc cannot read it either, and nothing undeclared may be executed.
    assert tries["open"].startswith(("FileNotFoundError", "PermissionError")), tries
    assert tries["gcc"].startswith("CalledProcessError"), tries
    assert tries["sh"].startswith("PermissionError"), tries
    assert tries["lower"].startswith("FlowError"), tries
    # What it stored stayed at bob's label; the anonymous run's copy sits at the bottom.
    empty = {"sources": {}, "headers": {}, "objects": {}, "artefacts": {}}
    assert anon.status == "ok" and json.loads(anon.value["body"])["seen"] == empty
    assert sorted(farm.view("top").facets("loot", "all"), key=lambda f: f[1]) == [
        (empty, "bottom"), (out["seen"], "builder:bob")]
    assert farm.view("builder:ann").facets("loot", "all") == [(empty, "bottom")]
    assert "4242" not in repr(farm.view("top").facets("loot", "ann_only"))


def test_the_baseline_runs_the_same_functions_to_the_same_objects(
    built: dict[str, Any], files: dict[str, bytes], tmp_path: Path
) -> None:
    # IFC off: plain store, warm unconfined workers, identical function code and manifest.
    with App.load(APP_DIR).start(store=f"sqlite:///{tmp_path / 'base.db'}", http=True,
                                 ifc=False) as rt:
        tokens = {who: rt.add_principal(who, label=f"builder:{who}") for who in ("ann", "bob")}
        results, _ = bf.build_all(rt.url, tokens, files, builders={"ann": bf.BUILDERS["ann"]},
                                  opt=OPT, jobs=6)
        # The difference IFC makes: in the baseline, bob reads ann's objects.
        with httpx.Client(base_url=rt.url, timeout=60) as c:
            stolen = c.get("/builds/lua-ann", headers=bearer(tokens["bob"])).json()
    # gcc is deterministic: the confined build and the baseline produce the same bytes.
    assert results["ann"].objects == built["ann"].objects
    assert bf.verify(results["ann"], tmp_path / "out")["math_pow"] is True
    assert {k: v["sha256"] for k, v in stolen["objects"].items()} == built["ann"].objects
