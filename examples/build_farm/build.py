"""Drive the build farm: fetch a real C code base, build it through the gateway, check the result.

    python examples/build_farm/build.py                  # Trapeze (IFC on), builders ann and bob
    python examples/build_farm/build.py --no-ifc         # the IFC-off baseline, same functions
    python examples/build_farm/build.py --compare 3      # both modes, alternating, 3 rounds

The code base is Lua 5.4.4 (34 translation units, plain C99, no configure step), fetched at run
time as a Debian source package with the machine's own apt configuration and cached. Each
builder uploads every source and header (one `POST /sources` each), compiles every
translation unit (one `POST /compile` each, `jobs` at a time), links (`POST /link`: liblua.a,
lua, luac) and gets the artefacts back; the driver then checks them outside the sandbox with
`nm` and by running the freshly built interpreter.

Importable (the tests and the benchmark): `fetch_sources`, `source_files`, `build` (one
builder), `build_all` (several at once), `run_builds` (start the app, then `build_all`),
`verify`.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import tomllib
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

APP_DIR = Path(__file__).resolve().parent
DEFAULT_CACHE = Path(
    os.environ.get("TRAPEZE_BUILD_FARM_CACHE", Path.home() / ".cache" / "trapeze" / "build_farm")
)


@dataclass(frozen=True)
class Project:
    """A C code base the farm can build without a configure step."""

    name: str
    deb_source: str  # the Debian source package that carries it
    orig_tarball: str  # the upstream tarball inside that source package
    sha256: str  # pinned: the same bytes on every run, whatever the Debian revision
    src_dir: str  # inside the tarball: where the .c and .h files are
    cflags: tuple[str, ...]
    archive: str
    programs: Mapping[str, tuple[str, ...]]  # program -> its own translation units
    libs: tuple[str, ...]


LUA = Project(
    name="lua",
    deb_source="lua5.4",
    orig_tarball="lua5.4_5.4.4.orig.tar.gz",
    sha256="164c7849653b80ae67bec4b7473b884bf5cc8d2dca05653475ec2ed27b9ebf61",
    src_dir="lua-5.4.4/src",
    cflags=("-std=gnu99", "-Wall", "-DLUA_USE_LINUX"),  # as Lua's own `make linux`
    archive="liblua.a",
    programs={"lua": ("lua.c",), "luac": ("luac.c",)},
    libs=("-lm", "-ldl"),
)


class FetchError(RuntimeError):
    """The sources could not be obtained from the package registry."""


class ToolchainMismatch(RuntimeError):
    """The manifest's declared executables are not the ones this machine's gcc runs."""


class BuildFailed(RuntimeError):
    pass


# --- Sources -------------------------------------------------------------------------------


def _deb_src_list() -> str:
    """The machine's apt sources (deb822 or one-line form) turned into deb-src entries, so
    the download goes wherever this machine's packages come from."""
    stanzas: list[str] = []
    root = Path("/etc/apt")
    for path in sorted((root / "sources.list.d").glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields = {}
            for line in stanza.splitlines():
                if ":" in line and not line.startswith(("#", " ")):
                    key, _, value = line.partition(":")
                    fields[key.strip()] = value.strip()
            if "deb" in fields.get("Types", "").split() and fields.get("Enabled") != "no":
                fields["Types"] = "deb-src"
                stanzas.append("\n".join(f"{k}: {v}" for k, v in fields.items()))
    one_line = [root / "sources.list", *sorted((root / "sources.list.d").glob("*.list"))]
    for path in one_line:
        if path.exists():
            for line in path.read_text().splitlines():
                if line.split()[:1] == ["deb"]:
                    stanzas.append(_one_line_to_deb822(line))
    if not stanzas:
        raise FetchError("no Debian package source is configured under /etc/apt: cannot "
                         "fetch source packages")
    return "\n\n".join(stanzas) + "\n"


def _one_line_to_deb822(line: str) -> str:
    words = line.split()[1:]
    options = []
    if words and words[0].startswith("["):
        while not words[0].endswith("]"):
            options.append(words.pop(0))
        options.append(words.pop(0))
    uri, suite, *components = words
    out = f"Types: deb-src\nURIs: {uri}\nSuites: {suite}\nComponents: {' '.join(components)}"
    for opt in " ".join(options).strip("[] ").split():
        if opt.startswith("signed-by="):
            out += f"\nSigned-By: {opt.partition('=')[2]}"
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _apt(args: list[str], state: Path, sources: Path, cwd: Path) -> None:
    cmd = ["apt-get", "-q", "-o", f"Dir::Etc::sourcelist={sources}",
           "-o", "Dir::Etc::sourceparts=/nonexistent", "-o", f"Dir::State::Lists={state}",
           "-o", "APT::Sandbox::User=root", "-o", "Acquire::Retries=2", *args]
    try:
        run = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300,
                             check=False)
    except FileNotFoundError:
        raise FetchError("apt-get is not installed: cannot fetch Debian source packages") \
            from None
    except subprocess.TimeoutExpired:
        raise FetchError(f"`apt-get {' '.join(args)}` did not finish in 300 s: is the "
                         "package registry reachable?") from None
    failed = [ln for ln in (run.stdout + run.stderr).splitlines()
              if ln.startswith(("E:", "W: Failed", "Err:"))]
    if run.returncode != 0 or (args[0] == "update" and failed):
        raise FetchError(f"`apt-get {' '.join(args)}` failed (exit {run.returncode}); the "
                         "Debian package registry may be unreachable:\n"
                         + "\n".join(failed or (run.stdout + run.stderr).splitlines()[-10:]))


def fetch_sources(project: Project = LUA, cache_dir: Path = DEFAULT_CACHE) -> Path:
    """The directory holding the project's .c and .h files, downloading them once.

    Raises FetchError with the registry's own message when the download fails: a build
    farm without sources has nothing to show, so callers (the tests too) must fail, loudly.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    tarball = cache_dir / project.orig_tarball
    unpacked = cache_dir / f"{project.orig_tarball}.d"
    if (unpacked / project.src_dir).is_dir():
        return unpacked / project.src_dir
    if not tarball.exists() or _sha256(tarball) != project.sha256:
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix="fetch-") as tmp:
            work = Path(tmp)
            (work / "lists" / "partial").mkdir(parents=True)
            sources = work / "deb-src.sources"
            sources.write_text(_deb_src_list())
            _apt(["update"], work / "lists", sources, work)
            _apt(["source", "--download-only", project.deb_source], work / "lists", sources,
                 work)
            got = work / project.orig_tarball
            if not got.exists():
                found = sorted(p.name for p in work.glob("*.orig.tar.*"))
                raise FetchError(f"the registry's {project.deb_source} source package has no "
                                 f"{project.orig_tarball} (it has {found}): update the pin "
                                 "in build.py")
            if _sha256(got) != project.sha256:
                raise FetchError(f"{project.orig_tarball} from the registry does not match "
                                 f"the pinned sha256 {project.sha256}")
            os.replace(got, tarball)
    tmp = tempfile.mkdtemp(dir=cache_dir, prefix="unpack-")
    try:
        with tarfile.open(tarball) as tf:
            tf.extractall(tmp, filter="data")
        # A rename, so that a concurrent or interrupted run never sees half a tree.
        os.replace(tmp, unpacked)
    except OSError:
        if not (unpacked / project.src_dir).is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return unpacked / project.src_dir


def source_files(src: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(src.iterdir()) if p.suffix in (".c", ".h")}


# --- The toolchain the manifest declares -------------------------------------------------------


def check_toolchain(app_dir: Path = APP_DIR) -> None:
    """gcc finds cc1 and collect2 by its own compiled-in paths, and Landlock lets a function
    exec only the exact files its manifest lists: on a machine with another gcc the build
    would fail inside the sandbox with a bare EACCES. Say so up front instead."""
    manifest = tomllib.loads((app_dir / "trapeze.toml").read_text())
    declared = {exe for fn in manifest["functions"].values()
                for exe in fn.get("executables", [])}
    for prog in ("cc1", "collect2"):
        try:
            path = subprocess.run(["gcc", f"-print-prog-name={prog}"], capture_output=True,
                                  text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError) as e:
            raise ToolchainMismatch(f"gcc is not usable on this machine: {e}") from None
        if os.path.realpath(path) not in {os.path.realpath(d) for d in declared}:
            raise ToolchainMismatch(
                f"this machine's gcc runs {path}, which {app_dir / 'trapeze.toml'} does not "
                "declare: put it in the `executables` of the compile and link functions")


# --- One build through the gateway -------------------------------------------------------------


@dataclass
class BuildResult:
    builder: str
    build: str
    cflags: list[str]
    artefacts: dict[str, bytes]
    objects: dict[str, str]  # object name -> sha256
    # upload, compile, link, total: wall-clock seconds as the driver saw them; gcc_cpu and
    # gcc_wall: summed over the compile invocations, as each function measured its gcc
    timings: dict[str, float]
    invocations: int
    diagnostics: dict[str, str] = field(default_factory=dict)


def _post(client: httpx.Client, path: str, body: dict[str, Any], ok: int = 200) -> Any:
    r = client.post(path, json=body)
    if r.status_code != ok:
        raise BuildFailed(f"POST {path} {body.get('source') or body.get('path') or ''}: "
                          f"{r.status_code} {r.text[:2000]}")
    return r.json()


def build(url: str, token: str, files: Mapping[str, bytes], *, builder: str = "",
          project: Project = LUA, build_id: str | None = None,
          extra_cflags: Sequence[str] = (), opt: str = "-O2", jobs: int = 8,
          timeout: float = 300.0) -> BuildResult:
    """Upload, compile every translation unit (`jobs` requests in flight), link.

    "total" is the wall-clock time from the first request to the last response."""
    build_id = build_id or f"{project.name}-{builder or 'build'}"
    cflags = [*project.cflags, opt, *extra_cflags]
    units = sorted(n for n in files if n.endswith(".c"))
    mains = {src for srcs in project.programs.values() for src in srcs}
    timings: dict[str, float] = {}
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=timeout,
                      limits=httpx.Limits(max_connections=jobs)) as client, \
            ThreadPoolExecutor(jobs) as pool:
        t0 = time.perf_counter()
        list(pool.map(lambda item: _post(client, "/sources", {
            "build": build_id, "path": item[0],
            "content": base64.b64encode(item[1]).decode("ascii")}, ok=201), files.items()))
        t1 = time.perf_counter()
        compiled = list(pool.map(lambda src: _post(client, "/compile", {
            "build": build_id, "source": src, "cflags": cflags}), units))
        t2 = time.perf_counter()
        linked = _post(client, "/link", {
            "build": build_id, "archive": project.archive,
            "members": [u[:-2] + ".o" for u in units if u not in mains],
            "programs": {p: [s[:-2] + ".o" for s in srcs]
                         for p, srcs in project.programs.items()},
            "libs": list(project.libs)})
        t3 = time.perf_counter()
    timings.update(upload=t1 - t0, compile=t2 - t1, link=t3 - t2, total=t3 - t0,
                   gcc_cpu=sum(c["gcc_cpu_s"] for c in compiled),
                   gcc_wall=sum(c["gcc_wall_s"] for c in compiled))
    return BuildResult(
        builder=builder, build=build_id, cflags=cflags,
        artefacts={n: base64.b64decode(a["data"]) for n, a in linked["artefacts"].items()},
        objects={c["object"]: c["sha256"] for c in compiled},
        timings=timings, invocations=len(files) + len(units) + 1,
        diagnostics={c["object"]: c["diagnostics"] for c in compiled if c["diagnostics"]},
    )


# --- Checking the artefacts, outside the sandbox --------------------------------------------

LUA_CHECK = (
    "local t = {} for i = 1, 10 do t[i] = i * i end "
    "print(_VERSION, table.concat(t, ','), math.pow ~= nil, ('%x'):format(0xbeef + 1))"
)


def verify(result: BuildResult, out_dir: Path) -> dict[str, Any]:
    """Write the artefacts out, check the library's symbols with nm and run the programs.

    Returns what was observed; raises BuildFailed if the artefacts are not a working Lua."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in result.artefacts.items():
        path = out_dir / name
        path.write_bytes(data)
        path.chmod(0o755 if not name.endswith(".a") else 0o644)
    nm = subprocess.run(["nm", "-g", "--defined-only", str(out_dir / LUA.archive)],
                        capture_output=True, text=True, check=True).stdout
    symbols = {line.split()[-1] for line in nm.splitlines() if line.count(" ") >= 2}
    missing = {"lua_newstate", "luaL_newstate", "lua_pcallk", "luaV_execute",
               "luaopen_math"} - symbols
    if missing:
        raise BuildFailed(f"{LUA.archive} lacks {sorted(missing)}")
    run = subprocess.run([str(out_dir / "lua"), "-e", LUA_CHECK], capture_output=True,
                         text=True, timeout=30, check=False)
    fields = run.stdout.strip().split("\t")
    if run.returncode != 0 or len(fields) != 4 or fields[:2] != ["Lua 5.4",
                                                                 "1,4,9,16,25,36,49,64,81,100"]:
        raise BuildFailed(f"the built lua misbehaves: {run.stdout!r} {run.stderr!r}")
    luac = subprocess.run([str(out_dir / "luac"), "-v"], capture_output=True, text=True,
                          timeout=30, check=False)
    if not luac.stdout.startswith("Lua 5.4.4"):
        raise BuildFailed(f"the built luac misbehaves: {luac.stdout!r} {luac.stderr!r}")
    return {"symbols": len(symbols), "version": fields[0], "math_pow": fields[2] == "true",
            "hex": fields[3], "luac": luac.stdout.split("  ")[0]}


# --- A whole scenario: start the app, build as several builders at once ------------------------

BUILDERS: dict[str, list[str]] = {
    # The same code base with a different -D each: ann keeps Lua 5.3's compatibility
    # functions (math.pow and friends), bob does not; the artefacts differ observably.
    "ann": ["-DLUA_COMPAT_5_3"],
    "bob": [],
}


def build_all(url: str, tokens: Mapping[str, str], files: Mapping[str, bytes], *,
              builders: Mapping[str, Sequence[str]] = BUILDERS, same_build_id: bool = False,
              opt: str = "-O2", jobs: int = 8) -> tuple[dict[str, BuildResult], float]:
    """Build as every builder at once against a running gateway; the results and the
    wall-clock time from the first request to the last response.

    `same_build_id` makes every builder use the build name "lua": under Trapeze each still
    sees only its own facets; in the baseline they would overwrite each other's files."""
    results: dict[str, BuildResult] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(builders))

    def one(builder: str) -> None:
        try:
            start.wait()
            results[builder] = build(
                url, tokens[builder], files, builder=builder,
                build_id="lua" if same_build_id else None,
                extra_cflags=builders[builder], opt=opt, jobs=jobs)
        except BaseException as e:  # re-raised below, in the caller's thread
            errors.append(e)

    threads = [threading.Thread(target=one, args=(b,)) for b in builders]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return results, wall


def run_builds(files: Mapping[str, bytes], *, ifc: bool = True,
               builders: Mapping[str, Sequence[str]] = BUILDERS, store_dir: Path | None = None,
               opt: str = "-O2", jobs: int = 8) -> tuple[dict[str, BuildResult], float]:
    """Start the app (IFC on or off) on a fresh store, register the builders, build_all."""
    from trapeze import App

    check_toolchain()
    with tempfile.TemporaryDirectory(dir=store_dir, prefix="build-farm-") as tmp, \
            App.load(APP_DIR).start(store=f"sqlite:///{tmp}/farm.db", http=True, ifc=ifc) as rt:
        tokens = {b: rt.add_principal(b, label=f"builder:{b}") for b in builders}
        return build_all(rt.url, tokens, files, builders=builders, opt=opt, jobs=jobs)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-ifc", action="store_true", help="run the IFC-off baseline")
    ap.add_argument("--compare", type=int, metavar="ROUNDS", default=0,
                    help="run both modes, alternating, ROUNDS times each")
    ap.add_argument("--opt", default="-O2", help="optimization flag (default -O2)")
    ap.add_argument("--jobs", type=int, default=8, help="requests in flight per builder")
    ap.add_argument("--builders", default=",".join(BUILDERS),
                    help=f"comma-separated, among {', '.join(BUILDERS)} (default: all)")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="download cache")
    ap.add_argument("--out", type=Path, default=None, help="keep the artefacts here")
    args = ap.parse_args(argv)
    unknown = set(args.builders.split(",")) - set(BUILDERS)
    if unknown:
        ap.error(f"unknown builders {sorted(unknown)}: choose among {', '.join(BUILDERS)}")
    builders = {b: BUILDERS[b] for b in args.builders.split(",")}

    src = fetch_sources(LUA, args.cache)
    files = source_files(src)
    units = sum(n.endswith(".c") for n in files)
    print(f"{LUA.orig_tarball}: {len(files)} files, {units} translation units, "
          f"builders {', '.join(builders)} ({args.jobs} requests in flight each, {args.opt})")
    modes = [not args.no_ifc] if not args.compare else [False, True] * args.compare
    walls: dict[bool, list[float]] = {False: [], True: []}
    for ifc in modes:
        results, wall = run_builds(files, ifc=ifc, builders=builders, opt=args.opt,
                                   jobs=args.jobs)
        walls[ifc].append(wall)
        name = "trapeze " if ifc else "baseline"
        for r in results.values():
            with tempfile.TemporaryDirectory() as tmp:
                out = args.out / f"{name.strip()}-{r.builder}" if args.out else Path(tmp)
                seen = verify(r, out)
            phases = "  ".join(f"{k} {v:6.2f} s" for k, v in r.timings.items())
            print(f"{name}  {r.builder}: {phases}  ({r.invocations} invocations; lua ok, "
                  f"math.pow {'present' if seen['math_pow'] else 'absent'})")
        print(f"{name}  all builders: {wall:.2f} s wall clock")
    if args.compare:
        base, ifc_on = statistics.median(walls[False]), statistics.median(walls[True])
        ratios = [t / b for b, t in zip(walls[False], walls[True], strict=True)]
        print(f"\nmedian over {args.compare} rounds: baseline {base:.2f} s, trapeze "
              f"{ifc_on:.2f} s, overhead {100 * (statistics.median(ratios) - 1):+.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
