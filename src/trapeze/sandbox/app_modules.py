"""The app's own Python modules, prepared once by the zygote for every child it forks.

Trusted; runs in the zygote. Untrusted code is compiled here but never executed: compiling
runs none of a module's code, which is what the zygote must never do (zygote.py says why).
A child would otherwise, per invocation, search the import path, compile the function's
modules from source (it cannot write bytecode caches: the app directory is read-only to it)
and import every standard-library module they name — ~5 ms of CPU for a Hello Retail
handler on this VM, more than the rest of its confinement and invocation together.

So the zygote
* compiles every module of the app directory (within a budget) to a code object;
* builds one spec per importable name — modules, packages, namespace packages — which a
  child's meta-path finder hands out with a dictionary lookup instead of a path search;
* imports, here, the standard-library modules the app's import statements name. The
  standard library is as trusted as the interpreter; third-party libraries are preloaded
  only when the manifest lists them (`preload`).

The finder is installed in the child only, after confinement: the zygote's own imports
never see app modules, so an app file named like a standard module cannot run here.
Changed files are noticed (the code object is used only while size and mtime match); files
added after the zygote started are found by the ordinary import path.
"""

from __future__ import annotations

import ast
import importlib
import importlib.abc
import importlib.machinery
import os
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import CodeType, ModuleType

from trapeze.sandbox.confine import path_within

# Source compiled ahead: at most this much of the app's modules, this many files, found
# among at most this many directory entries (an app folder may hold a large data tree).
PRECOMPILE_MAX_BYTES = 4 << 20
PRECOMPILE_MAX_FILES = 2000
WALK_MAX_ENTRIES = 50_000

# Standard-library packages never preloaded automatically even when app code imports them:
# importing them acts (prints, opens a browser or a window, runs a test suite, installs
# pip) or needs a display. The app chooses which names the (trusted, privileged) zygote
# imports, so any name with a `__main__` (or other dunder) part is refused too: such a
# module runs its program on import (`ensurepip.__main__` installs pip into the
# interpreter, `venv.__main__` creates a directory named by the zygote's argv).
NO_AUTO_PRELOAD = frozenset({
    "__hello__", "__phello__", "antigravity", "ensurepip", "idlelib", "lib2to3", "pydoc",
    "test", "this", "tkinter", "turtle", "turtledemo", "venv",
})

# Literal regular expressions compiled ahead, at most (re's own cache keeps 512).
MAX_PATTERNS = 256
# re's functions whose first argument is a pattern, and its flags by name.
_RE_FUNCTIONS = frozenset({"compile", "match", "fullmatch", "search", "sub", "subn", "split",
                           "findall", "finditer"})
_RE_FLAGS = {"A": 256, "ASCII": 256, "I": 2, "IGNORECASE": 2, "L": 4, "LOCALE": 4, "M": 8,
             "MULTILINE": 8, "S": 16, "DOTALL": 16, "U": 32, "UNICODE": 32, "X": 64,
             "VERBOSE": 64}

# path -> (st_mtime_ns, st_size, code object compiled from that version of the file)
_CODES: dict[str, tuple[int, int, CodeType]] = {}


class PrecompiledLoader(importlib.machinery.SourceFileLoader):
    """Hands a child the code object the zygote compiled, while the file is unchanged."""

    def get_code(self, fullname: str) -> CodeType | None:
        path = self.get_filename(fullname)
        entry = _CODES.get(path)
        if entry is not None:
            st = os.stat(path)
            if (st.st_mtime_ns, st.st_size) == entry[:2]:
                return entry[2]
        return super().get_code(fullname)


class AppModuleFinder(importlib.abc.MetaPathFinder):
    """In a child: the app's specs by name, placed where PathFinder is on sys.meta_path, so
    that precedence is the ordinary one (sys.modules, built-in and frozen modules first)."""

    def __init__(self, specs: dict[str, importlib.machinery.ModuleSpec]) -> None:
        self.specs = specs

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        # Each child imports a module once, so handing out the zygote's spec object (the
        # child's own copy-on-write copy of it) is safe.
        return self.specs.get(fullname)


@dataclass
class AppModules:
    app_dir: str
    specs: dict[str, importlib.machinery.ModuleSpec] = field(default_factory=dict)
    stdlib: set[str] = field(default_factory=set)
    patterns: set[tuple[str | bytes, int]] = field(default_factory=set)
    # Folders holding a compiled module, and the folders above them up to app_dir: the only
    # ones an import of app code can need (a data folder is never listed, however deep).
    code_dirs: set[str] = field(default_factory=set)
    _finder: AppModuleFinder | None = field(default=None, repr=False)

    @classmethod
    def compile(cls, app_dir: str) -> AppModules:
        app_dir = os.path.normpath(app_dir)
        self = cls(app_dir)
        for path, st in _app_sources(app_dir):
            # App source is attacker input to the zygote: a file too deep, too large or
            # otherwise pathological to parse, compile or analyse here is skipped, never
            # fatal (the zygote would not start); the child's own import then compiles it
            # and reports any error in the invocation's log.
            try:
                with open(path, "rb") as fh:
                    source = fh.read()
                tree = ast.parse(source, path)
                code = compile(tree, path, "exec", dont_inherit=True)
                stdlib = _stdlib_imports(tree)
                patterns = _literal_patterns(tree) if len(self.patterns) < MAX_PATTERNS \
                    else set()
            except (OSError, SyntaxError, ValueError, TypeError, RecursionError, MemoryError):
                continue
            _CODES[path] = (st.st_mtime_ns, st.st_size, code)
            folder = os.path.dirname(path)
            while folder not in self.code_dirs and path_within(folder, app_dir):
                self.code_dirs.add(folder)
                folder = os.path.dirname(folder)
            self.stdlib |= stdlib
            self.patterns |= patterns
        self._index(app_dir, "")
        self._finder = AppModuleFinder(self.specs)
        return self

    def _index(self, directory: str, prefix: str) -> None:
        """Specs for what `import prefix.NAME` finds in `directory`, with FileFinder's
        precedence: package, then module, then namespace package. Names that anything other
        than a compiled .py file could also provide (extension modules, bytecode-only files)
        are left to the ordinary import path."""
        try:
            entries = {e.name: e for e in os.scandir(directory)}
        except OSError:
            return
        stems: dict[str, list[str]] = {}
        for name in entries:
            stem, dot, _suffix = name.partition(".")
            if dot:
                stems.setdefault(stem, []).append(name)
        for name, entry in sorted(entries.items()):
            # code_dirs holds no hidden folder and no bytecode cache (see _app_sources).
            if (not name.isidentifier() or entry.path not in self.code_dirs
                    or not entry.is_dir(follow_symlinks=True)):
                continue
            full = prefix + name
            init = os.path.join(entry.path, "__init__.py")
            inits = [n for n in _listdir(entry.path) if n.startswith("__init__.")]
            if inits == ["__init__.py"] and init in _CODES:
                self.specs[full] = _source_spec(full, init, package_dir=entry.path)
                self._index(entry.path, full + ".")
            elif not inits and name + ".py" not in entries and name not in stems:
                if prefix or not _found_outside_app(name):
                    self.specs[full] = _namespace_spec(full, entry.path)
                    self._index(entry.path, full + ".")
        for stem, names in sorted(stems.items()):
            full = prefix + stem
            path = os.path.join(directory, stem + ".py")
            if (names == [stem + ".py"] and stem.isidentifier() and full not in self.specs
                    and path in _CODES):
                self.specs[full] = _source_spec(full, path)

    def preload(self) -> None:
        """Import, here and once, the standard-library modules the app's code names, so
        that no child pays for them (json and datetime alone cost a child ~3 ms), then fill
        `re`'s cache. A module that fails to import (a missing optional C library) is left
        to the child."""
        for name in sorted(self.stdlib):
            if name in sys.modules:
                continue
            try:
                importlib.import_module(name)
            except Exception:  # noqa: S112 - the child's own import reports it, if it matters
                continue
        self._compile_patterns()

    def _compile_patterns(self) -> None:
        """Fill `re`'s cache with the app's literal regular expressions: a module-level
        `re.compile(r"...")` then costs a child a dictionary lookup instead of running the
        pattern compiler (~0.5 ms for Hello Retail's date-time pattern, more in a fresh
        child). Compiling a pattern runs no app code; an invalid or pathological one (re.error,
        too deeply nested, too large) is left to the child, whose own compile reports it."""
        if not self.patterns or "re" not in sys.modules:
            return
        import re

        for pattern, flags in sorted(self.patterns, key=repr)[:MAX_PATTERNS]:
            try:
                re.compile(pattern, flags)
            except Exception:  # noqa: S112 - re.error, RecursionError, MemoryError, ...
                continue

    def install_finder(self) -> None:
        """In the child, after confinement (the finder was built by compile())."""
        at = sys.meta_path.index(importlib.machinery.PathFinder) \
            if importlib.machinery.PathFinder in sys.meta_path else len(sys.meta_path)
        assert self._finder is not None, "install_finder() before compile()"
        sys.meta_path.insert(at, self._finder)


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _source_spec(name: str, path: str, *,
                 package_dir: str | None = None) -> importlib.machinery.ModuleSpec:
    loader = PrecompiledLoader(name, path)
    spec = importlib.machinery.ModuleSpec(name, loader, origin=path,
                                          is_package=package_dir is not None)
    spec.has_location = True
    if package_dir is not None:
        spec.submodule_search_locations = [package_dir]
    spec.cached = None
    return spec


def _namespace_spec(name: str, directory: str) -> importlib.machinery.ModuleSpec:
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [directory]
    return spec


def _found_outside_app(name: str) -> bool:
    """A top-level folder without __init__.py is only a namespace package if no other
    entry of the import path provides the name (the zygote's path is the child's minus the
    app directory)."""
    try:
        return importlib.machinery.PathFinder.find_spec(name) is not None
    except (ImportError, ValueError):
        return True


def _app_sources(app_dir: str) -> list[tuple[str, os.stat_result]]:
    """The app's .py files in a stable order, within the budget. Hidden folders (the
    monitor's own are, and are covered by now anyway) and bytecode caches are skipped.

    Only files a child could read itself: the zygote reads them with its own rights (root,
    or root of its user namespace), and a code object carries the file's text, so a file
    the child's uid may not read (no read bit for others, or a folder above it without the
    search bit) or a symbolic link leading out of the app directory is left to the child's
    own import, which then succeeds or fails as the file's permissions say. A link is
    followed by the child's open() too, so the folders above its target must be searchable
    as well as those above the link itself."""
    found: list[tuple[str, os.stat_result]] = []
    budget = PRECOMPILE_MAX_BYTES
    seen = 0
    real_app = os.path.realpath(app_dir)
    for top, dirnames, filenames in os.walk(app_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
        seen += len(dirnames) + len(filenames)
        if seen > WALK_MAX_ENTRIES:
            return found
        if not _searchable_by_others(app_dir, top):
            continue
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            path = os.path.join(top, name)
            try:
                st = os.stat(path)
                real = os.path.realpath(path)
            except OSError:
                continue
            if (not stat.S_ISREG(st.st_mode) or not st.st_mode & stat.S_IROTH
                    or not path_within(real, real_app)
                    or not _searchable_by_others(real_app, os.path.dirname(real))
                    or st.st_size > budget):
                continue
            budget -= st.st_size
            found.append((path, st))
            if len(found) >= PRECOMPILE_MAX_FILES:
                return found
    return found


def _searchable_by_others(app_dir: str, folder: str) -> bool:
    """Every folder from the app directory (exclusive) down to `folder` has the search bit
    for others, so that a child's uid can open files in it."""
    while folder != app_dir and path_within(folder, app_dir):
        try:
            if not os.stat(folder).st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
        folder = os.path.dirname(folder)
    return True


def _stdlib_imports(tree: ast.AST) -> set[str]:
    """Standard-library modules a module's import statements name (at any depth: an import
    inside a function runs per invocation too). Relative imports are the app's own."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return {name for name in names
            if name.partition(".")[0] in sys.stdlib_module_names
            and name.partition(".")[0] not in NO_AUTO_PRELOAD
            and not any(part.startswith("__") for part in name.split("."))}


def _literal_patterns(tree: ast.AST) -> set[tuple[str | bytes, int]]:
    """(pattern, flags) of calls `re.compile("...")`, `re.match(r"...", s, re.I | re.M)`...
    whose pattern is a string literal and whose flags, if any, are re's named flags."""
    found: set[tuple[str | bytes, int]] = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "re"
                and node.func.attr in _RE_FUNCTIONS and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str | bytes)):
            continue
        flag_node: ast.expr | None = next(
            (k.value for k in node.keywords if k.arg == "flags"), None)
        if flag_node is None and node.func.attr == "compile" and len(node.args) > 1:
            flag_node = node.args[1]
        flags = 0 if flag_node is None else _flags_value(flag_node)
        if flags is not None:
            found.add((node.args[0].value, flags))
    return found


def _flags_value(node: ast.expr) -> int | None:
    """The value of `re.I | re.M | 4`..., or None. Iterative: an operand chain is as deep
    as the app's source makes it."""
    value = 0
    pending = [node]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            pending += (node.left, node.right)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id == "re" and node.attr in _RE_FLAGS:
            value |= _RE_FLAGS[node.attr]
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            value |= node.value
        else:
            return None
    return value
