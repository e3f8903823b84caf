"""Load and validate ``trapeze.toml`` (the schema is documented in docs/manifest.md).

The manifest is part of the trusted base: it decides labels, bounds and who may declassify.
So validation is strict (unknown keys are errors, not ignored: a misspelt ``bound`` must not
silently fall back to a default) and it collects every problem in one pass, each naming the
file, the line and what to write instead.

Nothing here imports or runs app code: handler and policy files are only parsed with ``ast``.
"""

from __future__ import annotations

import ast
import difflib
import json
import keyword
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from trapeze.labels import FAMILY_SUFFIX, LabelError, Lattice, UnknownLabelError
from trapeze.policy.locate import Locator
from trapeze.policy.specs import (
    RESPONSE_CHANNEL,
    ChannelSpec,
    DeclassifierSpec,
    FunctionSpec,
    LimitsSpec,
    Manifest,
    ManifestError,
    PrincipalSpec,
    Problem,
    RouteSpec,
    StreamSpec,
    WorkflowSpec,
)

MANIFEST_NAME = "trapeze.toml"
RESERVED_ROUTE_PREFIX = "/_trapeze"
"""Paths under this prefix belong to the platform's own HTTP API (logs, audit)."""

HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
ROUTE_CONVERTERS = ("str", "int", "float", "path", "uuid")

# Each section's keys with the example value shown in "write KEY = EXAMPLE instead".
_APP = {"name": '"hello-retail"', "policy": '"policy.py"', "data": '".trapeze"'}
_PRINCIPAL = {"label": '"owner"', "token": '"dev-owen"'}
_CHANNEL_COMMON = {"kind": '"http"', "bound": '"public"', "timeout": "5.0"}
_CHANNEL_SMTP = {"host": '"127.0.0.1"', "port": "2525", "sender": '"store@example.com"'}
_CHANNEL_HTTP = {"url_prefixes": '["https://api.example.com/"]', "max_response_bytes": "10485760"}
_CHANNEL = {**_CHANNEL_COMMON, **_CHANNEL_SMTP, **_CHANNEL_HTTP}
_FUNCTION = {
    "handler": '"functions/NAME.py:handler"',
    "timeout": "10",
    "memory_mb": "256",
    "executables": '["/usr/bin/convert"]',
    "env": '{ STAGE = "dev" }',
    "preload": '["json"]',
    "concurrency": "16",
    "retries": "2",
    "prefork": "1",
}
_ROUTE = {
    "path": '"/events"',
    "methods": '["POST"]',
    "function": '"NAME"',
    "anonymous": "false",
    "max_body_bytes": "1048576",
}
_DECLASSIFIER = {
    "channel": '"response"',
    "function": '"release"',
    "max_label": '"owner"',
    "bound": '"public"',
}
_STREAM = {
    "consumers": '["NAME"]',
    "batch_size": "10",
    "max_attempts": "5",
    "max_record_bytes": "262144",
}
_WORKFLOW = {"definition": '"workflows/NAME.json"', "start_from": '["NAME"]'}
_LIMITS = {"concurrency": "64", "queue": "256", "workflow_executions": "1000"}

SECTIONS = (
    "app",
    "labels",
    "principals",
    "channels",
    "functions",
    "routes",
    "declassifiers",
    "streams",
    "workflows",
    "limits",
)

_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]*\Z")  # functions, channels, streams, ...
_PRINCIPAL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]*\Z")  # may be an email-like id
_LABEL_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+\Z")  # as trapeze.labels accepts
_ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_PARAM_RE = re.compile(r"\{([^{}]*)\}")
_TOML_POS_RE = re.compile(r"at line (\d+)")

_MISSING = object()


def _toml_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date/time"


def _key_text(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _suggest(word: str, choices: Iterable[str]) -> str | None:
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


def _one_of(choices: Iterable[str]) -> str:
    items = sorted(choices)
    return ", ".join(items) if items else "(none declared)"


@dataclass(frozen=True)
class _At:
    """Where a table sits: its TOML path, and its index when it is an element of [[...]]."""

    path: tuple[str, ...]
    nth: int | None = None

    @property
    def title(self) -> str:
        inner = ".".join(_key_text(p) for p in self.path)
        if self.nth is not None:
            return f"[[{inner}]] #{self.nth + 1}"
        return f"[{inner}]"


def load_manifest(app_dir_or_file: str | os.PathLike[str]) -> Manifest:
    """Load and validate an app's manifest; raise :class:`ManifestError` listing every problem.

    Warnings (see :func:`validate_manifest`) do not fail the load; they are kept in
    :attr:`Manifest.warnings`.
    """
    manifest, problems, warnings = validate_manifest(app_dir_or_file)
    if problems or manifest is None:
        raise ManifestError(problems, warnings)
    return manifest


def validate_manifest(
    app_dir_or_file: str | os.PathLike[str],
) -> tuple[Manifest | None, list[Problem], list[Problem]]:
    """Validate without raising: (manifest or None, errors, warnings), each sorted by line."""
    return _Loader(Path(app_dir_or_file)).run()


class _Loader:
    def __init__(self, given: Path) -> None:
        # Messages use the path as the user wrote it (relative stays relative); the Manifest
        # and the file checks use the resolved one.
        self.file = given / MANIFEST_NAME if given.is_dir() else given
        self.root = self.file.parent.resolve()
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []
        self.loc = Locator("")
        self.lattice: Lattice | None = None
        self.function_names: set[str] = set()
        self.channel_names: set[str] = set()

    # ----------------------------------------------------------------- reporting
    def error(self, line: int, message: str, instead: str, file: Path | None = None) -> None:
        text = f"{message} — write {instead} instead"
        self.problems.append(Problem(file or self.file, line, text))

    def warn(self, line: int, message: str, instead: str) -> None:
        self.warnings.append(Problem(self.file, line, f"{message} — write {instead} instead"))

    def line(self, at: _At, key: str | None = None, value: str | None = None) -> int:
        if key is None:
            return self.loc.section(at.path, nth=at.nth)
        return self.loc.line(at.path, key, nth=at.nth, value=value)

    def display(self, path: Path) -> Path:
        """A path under the app dir, written as the user would see it next to the manifest."""
        try:
            return self.file.parent / path.relative_to(self.root)
        except ValueError:
            return path

    # ----------------------------------------------------------------- generic checks
    def table(
        self,
        raw: object,
        at: _At,
        schema: Mapping[str, str],
        required: Iterable[str] = (),
        what: str = "table",
    ) -> dict[str, Any] | None:
        """Check that ``raw`` is a table with only known keys and all required ones."""
        if not isinstance(raw, dict):
            example = next(iter(schema.items()), ("key", '"value"'))
            self.error(
                self.line(at),
                f"{at.title} must be a {what}, got {_toml_type(raw)}",
                f"{at.title} followed by lines like {example[0]} = {example[1]}",
            )
            return None
        for key in raw:
            if key not in schema:
                close = _suggest(key, schema)
                instead = f"{close} = {schema[close]}" if close else f"one of {_one_of(schema)}"
                self.error(
                    self.line(at, key), f"unknown key '{key}' in {at.title}", instead
                )
        for key in required:
            if key not in raw:
                self.error(
                    self.line(at),
                    f"{at.title} is missing the required key '{key}'",
                    f"{key} = {schema[key]}",
                )
        return raw

    def typed(
        self,
        tbl: Mapping[str, Any],
        at: _At,
        schema: Mapping[str, str],
        key: str,
        accept: Callable[[object], bool],
        what: str,
    ) -> Any:
        """The value of ``key`` if present and accepted; ``_MISSING`` otherwise (reported)."""
        if key not in tbl:
            return _MISSING
        value = tbl[key]
        if not accept(value):
            self.error(
                self.line(at, key),
                f"'{key}' in {at.title} must be {what}, got {_toml_type(value)}",
                f"{key} = {schema[key]}",
            )
            return _MISSING
        return value

    def string(
        self, tbl: Mapping[str, Any], at: _At, schema: Mapping[str, str], key: str
    ) -> str | None:
        v = self.typed(tbl, at, schema, key, lambda x: isinstance(x, str), "a string")
        if v is _MISSING:
            return None
        if not v.strip():
            self.error(
                self.line(at, key), f"'{key}' in {at.title} is empty", f"{key} = {schema[key]}"
            )
            return None
        return str(v)

    def integer(
        self,
        tbl: Mapping[str, Any],
        at: _At,
        schema: Mapping[str, str],
        key: str,
        lo: int,
        hi: int,
        default: int,
    ) -> int:
        v = self.typed(
            tbl,
            at,
            schema,
            key,
            lambda x: isinstance(x, int) and not isinstance(x, bool),
            "an integer",
        )
        if v is _MISSING:
            return default
        if not lo <= v <= hi:
            self.error(
                self.line(at, key),
                f"'{key}' = {v} in {at.title} is out of range ({lo}..{hi})",
                f"{key} = {min(max(v, lo), hi)}",
            )
            return default
        return int(v)

    def number(
        self,
        tbl: Mapping[str, Any],
        at: _At,
        schema: Mapping[str, str],
        key: str,
        hi: float,
        default: float,
    ) -> float:
        """A positive number (int or float) at most ``hi``; NaN and inf are refused."""
        v = self.typed(
            tbl,
            at,
            schema,
            key,
            lambda x: isinstance(x, int | float) and not isinstance(x, bool),
            "a number",
        )
        if v is _MISSING:
            return default
        if not (math.isfinite(v) and 0 < v <= hi):
            self.error(
                self.line(at, key),
                f"'{key}' = {v} in {at.title} must be greater than 0 and at most {hi:g}",
                f"{key} = {schema[key]}",
            )
            return default
        return float(v)

    def boolean(
        self, tbl: Mapping[str, Any], at: _At, schema: Mapping[str, str], key: str, default: bool
    ) -> bool:
        v = self.typed(
            tbl, at, schema, key, lambda x: isinstance(x, bool), "true or false"
        )
        return default if v is _MISSING else bool(v)

    def strings(
        self, tbl: Mapping[str, Any], at: _At, schema: Mapping[str, str], key: str
    ) -> list[str] | None:
        v = self.typed(
            tbl,
            at,
            schema,
            key,
            lambda x: isinstance(x, list) and all(isinstance(i, str) for i in x),
            "an array of strings",
        )
        return None if v is _MISSING else list(v)

    def names(
        self,
        tbl: Mapping[str, Any],
        at: _At,
        schema: Mapping[str, str],
        key: str,
        known: set[str],
        kind: str,
    ) -> tuple[str, ...]:
        """An array of references to declared things (functions); each unknown one reported."""
        out: list[str] = []
        for name in self.strings(tbl, at, schema, key) or []:
            if name in out:
                self.error(
                    self.line(at, key, name),
                    f"{kind} '{name}' is listed twice in '{key}' of {at.title}",
                    f"'{name}' once",
                )
            elif name not in known:
                self.unknown_ref(self.line(at, key, name), name, known, kind, f"in {at.title}")
            else:
                out.append(name)
        return tuple(out)

    def unknown_ref(self, line: int, name: str, known: set[str], kind: str, where: str) -> None:
        close = _suggest(name, known)
        section = {"function": "functions", "channel": "channels"}.get(kind, kind + "s")
        instead = (
            f"'{close}'"
            if close
            else f"one of {_one_of(known)} (or declare [{section}.{_key_text(name)}])"
        )
        self.error(line, f"unknown {kind} '{name}' {where}", instead)

    def name_ok(self, name: str, at: _At, pattern: re.Pattern[str], kind: str) -> bool:
        if pattern.match(name):
            return True
        fixed = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "name"
        if not fixed[0].isalpha():
            fixed = "x" + fixed
        self.error(
            self.line(at),
            f"invalid {kind} name '{name}' in {at.title} (use letters, digits, '-' and '_', "
            f"starting with a letter)",
            f"[{'.'.join(_key_text(p) for p in at.path[:-1] + (fixed,))}]",
        )
        return False

    def label(
        self, tbl: Mapping[str, Any], at: _At, schema: Mapping[str, str], key: str
    ) -> str | None:
        value = self.string(tbl, at, schema, key)
        if value is None or self.lattice is None:
            # Without a valid lattice, label errors would only repeat the [labels] problem.
            return value
        try:
            return self.lattice.check(value)
        except UnknownLabelError as exc:
            samples = self.lattice.sample_labels(("NAME",))
            fam = value.partition(":")[0]
            if f"{fam}:NAME" in samples:
                close: str | None = f"{fam}:NAME"
            else:
                close = _suggest(value, samples) or self.lattice.bottom
            self.error(
                self.line(at, key),
                f"'{key}' in {at.title}: {exc}",
                f'{key} = "{close}" (labels: {", ".join(samples)})',
            )
            return None

    def section_tables(self, data: Mapping[str, Any], name: str) -> dict[str, Any]:
        """A section made of named sub-tables, like [functions.x]; {} if absent or not a table."""
        raw = data.get(name, {})
        if not isinstance(raw, dict):
            self.error(
                self.loc.section((name,)),
                f"'{name}' must be a section of tables, got {_toml_type(raw)}",
                f"[{name}.NAME] headers",
            )
            return {}
        return raw

    def app_file(self, text: str, at: _At, key: str, suffixes: tuple[str, ...]) -> Path | None:
        """A file named relative to the app dir: inside it, existing, with a fitting suffix."""
        line = self.line(at, key)
        rel = Path(text)
        if rel.is_absolute() or ".." in rel.parts:
            self.error(
                line,
                f"'{key}' = '{text}' in {at.title} must be a path inside the app directory",
                f'{key} = "{rel.name}" (relative to {self.file.parent})',
            )
            return None
        if rel.suffix not in suffixes:
            self.error(
                line,
                f"'{key}' = '{text}' in {at.title} must name a {' or '.join(suffixes)} file",
                f'{key} = "{rel.with_suffix(suffixes[0]).as_posix()}"',
            )
            return None
        full = (self.root / rel).resolve()
        if not full.is_relative_to(self.root):
            self.error(
                line,
                f"'{key}' = '{text}' in {at.title} leads outside the app directory",
                f"{key} = a path to a file under {self.file.parent}",
            )
            return None
        if not full.is_file():
            close = _suggest(rel.as_posix(), self.app_files(suffixes))
            self.error(
                line,
                f"file '{self.display(self.root / rel)}' named by '{key}' in {at.title} "
                f"does not exist",
                f'{key} = "{close}"' if close else f"{key} = the path of an existing file",
            )
            return None
        return full

    def app_files(self, suffixes: tuple[str, ...]) -> list[str]:
        out: list[str] = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "__pycache__"]
            for f in filenames:
                if Path(f).suffix in suffixes:
                    out.append((Path(dirpath) / f).relative_to(self.root).as_posix())
            if len(out) > 500:  # a suggestion is not worth walking a huge tree
                break
        return out

    def top_level_names(self, file: Path) -> tuple[set[str], bool] | None:
        """Names bound at the top level of a Python file, and whether it has ``import *``.

        Parsed with ``ast``: validation must never run app code. None on a syntax error
        (reported at the file's own line).
        """
        try:
            tree = ast.parse(file.read_bytes(), filename=str(file))
        except SyntaxError as exc:
            self.error(
                exc.lineno or 1,
                f"Python syntax error: {exc.msg}",
                "valid Python at this line",
                file=self.display(file),
            )
            return None
        except (OSError, ValueError) as exc:
            self.error(1, f"cannot read {file.name}: {exc}", "a readable UTF-8 Python file",
                       file=self.display(file))
            return None
        names: set[str] = set()
        star = False
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
            elif isinstance(node, ast.AnnAssign | ast.AugAssign) and isinstance(
                node.target, ast.Name
            ):
                names.add(node.target.id)
            elif isinstance(node, ast.Import | ast.ImportFrom):
                for alias in node.names:
                    if alias.name == "*":
                        star = True
                    else:
                        names.add(alias.asname or alias.name.split(".")[0])
        return names, star

    # ----------------------------------------------------------------- the whole file
    def run(self) -> tuple[Manifest | None, list[Problem], list[Problem]]:
        manifest = self.load()
        # Manifest problems first, in line order, then those located in other files.
        key = lambda p: (p.file != self.file, str(p.file), p.line)  # noqa: E731
        self.problems.sort(key=key)
        self.warnings.sort(key=key)
        if self.problems:
            return None, self.problems, self.warnings
        return manifest, [], self.warnings

    def load(self) -> Manifest | None:
        try:
            text = self.file.read_text(encoding="utf-8")
        except FileNotFoundError:
            where = self.file.parent
            self.error(
                1,
                f"no {self.file.name} in {where}",
                f"a {MANIFEST_NAME} in {where} (see docs/manifest.md)",
            )
            return None
        except (OSError, UnicodeDecodeError) as exc:
            self.error(1, f"cannot read the manifest: {exc}", "a readable UTF-8 file")
            return None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            m = _TOML_POS_RE.search(str(exc))
            line = int(m.group(1)) if m else max(1, len(text.splitlines()))
            self.error(
                line,
                f"TOML syntax error: {exc}",
                'TOML at this line, e.g. key = "text", n = 10, list = ["a", "b"]',
            )
            return None
        self.loc = Locator(text)

        for name, value in data.items():
            if name not in SECTIONS:
                close = _suggest(name, SECTIONS)
                what = "section" if isinstance(value, dict | list) else "top-level key"
                self.error(
                    self.loc.section((name,)),
                    f"unknown {what} '{name}'",
                    f"[{close}]" if close else f"one of {', '.join(f'[{s}]' for s in SECTIONS)}",
                )

        # Names other sections refer to are collected first, so that one broken function
        # does not also make every route to it "unknown".
        functions_raw = self.section_tables(data, "functions")
        channels_raw = self.section_tables(data, "channels")
        self.function_names = set(functions_raw)
        self.channel_names = set(channels_raw)

        app = self.load_app(data.get("app", _MISSING))
        self.lattice = self.load_labels(data.get("labels", _MISSING))
        principals = self.load_principals(self.section_tables(data, "principals"))
        channels = self.load_channels(channels_raw)
        functions = self.load_functions(functions_raw)
        routes = self.load_routes(data.get("routes", []))
        declassifiers = self.load_declassifiers(
            self.section_tables(data, "declassifiers"), channels, app.get("policy_path")
        )
        streams = self.load_streams(self.section_tables(data, "streams"))
        workflows = self.load_workflows(self.section_tables(data, "workflows"))
        limits = self.load_limits(data.get("limits", {}))

        if workflows and self.lattice is not None:
            self.check_joins(self.lattice)

        if self.problems or self.lattice is None or "name" not in app:
            return None
        return Manifest(
            root=self.root,
            path=self.file.resolve(),
            name=app["name"],
            lattice=self.lattice,
            principals=principals,
            channels=channels,
            functions=functions,
            routes=routes,
            declassifiers=declassifiers,
            streams=streams,
            workflows=workflows,
            limits=limits,
            data_dir=app["data_dir"],
            policy_path=app.get("policy_path"),
            warnings=tuple(self.warnings),
        )

    # ----------------------------------------------------------------- [app]
    def load_app(self, raw: object) -> dict[str, Any]:
        at = _At(("app",))
        out: dict[str, Any] = {"data_dir": self.root / ".trapeze"}
        if raw is _MISSING:
            self.error(1, "the manifest has no [app] section", '[app] with name = "my-app"')
            return out
        tbl = self.table(raw, at, _APP, required=("name",))
        if tbl is None:
            return out
        name = self.string(tbl, at, _APP, "name")
        if name is not None:
            if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
                out["name"] = name
            else:
                fixed = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "my-app"
                self.error(
                    self.line(at, "name"),
                    f"invalid app name '{name}' (letters, digits, '-', '_', '.')",
                    f'name = "{fixed}"',
                )
        policy = self.string(tbl, at, _APP, "policy")
        if policy is not None:
            path = self.app_file(policy, at, "policy", (".py",))
            if path is not None:
                out["policy_path"] = path
        data = self.string(tbl, at, _APP, "data")
        if data is not None:
            out["data_dir"] = Path(data) if Path(data).is_absolute() else self.root / data
        return out

    # ----------------------------------------------------------------- [labels]
    def load_labels(self, raw: object) -> Lattice | None:
        at = _At(("labels",))
        if raw is _MISSING:
            self.error(
                1,
                "the manifest has no [labels] section",
                '[labels] with chain = ["public", "private"] or a Hasse diagram',
            )
            return None
        if not isinstance(raw, dict):
            self.error(
                self.line(at),
                f"[labels] must be a table, got {_toml_type(raw)}",
                '[labels] followed by lines like public = ["private"]',
            )
            return None
        if not raw:
            self.error(self.line(at), "[labels] is empty", 'chain = ["public", "private"]')
            return None
        if list(raw) == ["chain"]:
            return self.load_chain(raw["chain"], at)
        return self.load_diagram(raw, at)

    def label_text_ok(self, text: str, line: int, where: str) -> bool:
        """A name as the diagram may write it: plain ``owner`` or family ``client:*``."""
        if text.endswith(FAMILY_SUFFIX):
            fam = text[: -len(FAMILY_SUFFIX)]
            if _LABEL_NAME_RE.match(fam):
                return True
            fixed = re.sub(r"[^A-Za-z0-9_.-]+", "-", fam).strip("-") or "family"
            self.error(line, f"invalid label family '{text}' {where}", f'"{fixed}:*"')
            return False
        if ":" in text:
            fam = text.partition(":")[0]
            self.error(
                line,
                f"'{text}' {where} names one member of the family '{fam}'; the diagram names "
                f"whole families (members like '{text}' exist without being listed)",
                f'"{fam}:*"',
            )
            return False
        if _LABEL_NAME_RE.match(text):
            return True
        fixed = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "label"
        self.error(
            line,
            f"invalid label name '{text}' {where} (use letters, digits, '-', '_', '.')",
            f'"{fixed}"',
        )
        return False

    def load_chain(self, chain: object, at: _At) -> Lattice | None:
        line = self.line(at, "chain")
        if not (isinstance(chain, list) and chain and all(isinstance(x, str) for x in chain)):
            self.error(
                line, "'chain' in [labels] must be a non-empty array of label names",
                'chain = ["public", "private"]',
            )
            return None
        ok = True
        seen: set[str] = set()
        for name in chain:
            vline = self.line(at, "chain", name)
            if name in seen:
                self.error(vline, f"label '{name}' appears twice in the chain", f"'{name}' once")
                ok = False
            seen.add(name)
            if name.endswith(FAMILY_SUFFIX) or ":" in name:
                self.error(
                    vline,
                    f"'{name}' in a chain: a chain lists plain labels only",
                    "a Hasse diagram (label = [labels above]) for families",
                )
                ok = False
            elif not self.label_text_ok(name, vline, "in the chain"):
                ok = False
        if not ok:
            return None
        try:
            return Lattice.chain(chain)
        except LabelError as exc:  # not expected after the checks above; keep its words
            self.error(line, f"[labels]: {exc}", 'chain = ["public", "private"]')
            return None

    def load_diagram(self, raw: dict[str, Any], at: _At) -> Lattice | None:
        ok = True
        # Abstract nodes: plain names, and family names without ":*" (as trapeze.labels does).
        above: dict[str, list[str]] = {}
        mention: dict[str, int] = {}  # first line where a node appears
        texts: dict[str, str] = {}  # node -> how the manifest writes it
        edge_line: dict[tuple[str, str], int] = {}

        def node(text: str, line: int) -> str:
            name = text[: -len(FAMILY_SUFFIX)] if text.endswith(FAMILY_SUFFIX) else text
            mention.setdefault(name, line)
            above.setdefault(name, [])
            if texts.setdefault(name, text) != text:
                first, second = sorted((texts[name], text), key=len)
                self.error(
                    line,
                    f"'{name}' is used both as a plain label '{first}' and as a family "
                    f"'{second}'",
                    "different names for the label and the family",
                )
                nonlocal ok
                ok = False
            return name

        for lower, uppers in raw.items():
            kline = self.line(at, lower)
            lower_ok = self.label_text_ok(lower, kline, "in [labels]")
            if not (isinstance(uppers, list) and all(isinstance(u, str) for u in uppers)):
                self.error(
                    kline,
                    f"{_key_text(lower)} in [labels] must list the labels directly above it",
                    f'{_key_text(lower)} = ["LABEL", ...] (or [] for the top)',
                )
                ok = False
                continue
            if not lower_ok:
                ok = False
                continue
            lo = node(lower, kline)
            for upper in uppers:
                vline = self.line(at, lower, upper)
                if not self.label_text_ok(upper, vline, f"above {_key_text(lower)} in [labels]"):
                    ok = False
                    continue
                up = node(upper, vline)
                if up == lo:
                    self.error(
                        vline,
                        f"'{upper}' is listed above itself",
                        f"{_key_text(lower)} = [...] without '{upper}'",
                    )
                    ok = False
                elif up not in above[lo]:
                    above[lo].append(up)
                    edge_line[(lo, up)] = vline
        # Cycles are still worth finding among the well-formed entries; one and only one
        # bottom/top is not, as skipped entries would make that count wrong.
        if not self.check_order(above, mention, texts, edge_line, extremes=ok) or not ok:
            return None
        try:
            return Lattice.from_hasse(raw)
        except LabelError as exc:
            # Everything trapeze.labels rejects should have been caught above with a precise
            # line; if its rules grow, still report, at the first label its message names.
            named = [n for n in re.findall(r"'([^']+)'", str(exc)) if n in raw]
            line = self.line(at, named[0]) if named else self.line(at)
            self.error(line, f"[labels]: {exc}", "a label order as in docs/manifest.md#labels")
            return None

    def check_order(
        self,
        above: dict[str, list[str]],
        mention: dict[str, int],
        texts: dict[str, str],
        edge_line: dict[tuple[str, str], int],
        extremes: bool = True,
    ) -> bool:
        """No cycles, one bottom, one top; families need something below and above them."""
        # Cycles: depth-first search in the order the manifest writes things, so the
        # reported edge is the one that closes the loop as the reader meets it.
        state: dict[str, int] = {}  # 1 = on the current path, 2 = done
        cycles: list[list[str]] = []

        def visit(n: str, path: list[str]) -> None:
            state[n] = 1
            path.append(n)
            for up in above[n]:
                if state.get(up) == 1:
                    cycles.append(path[path.index(up) :] + [up])
                elif up not in state:
                    visit(up, path)
            path.pop()
            state[n] = 2

        for n in sorted(above, key=lambda n: mention[n]):
            if n not in state:
                visit(n, [])
        for cycle in cycles:
            lo, up = cycle[-2], cycle[-1]
            self.error(
                edge_line[(lo, up)],
                "label cycle " + " ⊑ ".join(texts[n] for n in cycle)
                + ": a label order cannot loop back on itself",
                f"{_key_text(texts[lo])} = [...] without '{texts[up]}'",
            )
        if cycles:
            return False
        if not extremes:
            return True

        has_below = {up for ups in above.values() for up in ups}
        ok = True
        for word, ends, fix in (
            ("bottom", [n for n in above if n not in has_below], "below"),
            ("top", [n for n in above if not above[n]], "above"),
        ):
            ends.sort(key=lambda n: mention[n])
            for fam in (n for n in ends if texts[n].endswith(FAMILY_SUFFIX)):
                self.error(
                    mention[fam],
                    f"family '{texts[fam]}' has nothing {fix} it; every label needs a path "
                    f"{'from the bottom' if word == 'bottom' else 'to the top'}",
                    f'a label {fix} it, e.g. bottom = ["{texts[fam]}"]'
                    if word == "bottom"
                    else f'"{texts[fam]}" = ["top"]',
                )
                ok = False
            plain = [n for n in ends if not texts[n].endswith(FAMILY_SUFFIX)]
            if len(plain) > 1:
                # Keep the one named "bottom"/"top" if any (else the first bottom / last top
                # as written) and point at the others, which are usually the slip.
                main = word if word in plain else plain[0 if word == "bottom" else -1]
                others = [n for n in plain if n != main]
                names = ", ".join(texts[n] for n in plain)
                if word == "bottom":
                    listed = ", ".join(json.dumps(texts[n]) for n in others)
                    instead = f"{_key_text(texts[main])} = [..., {listed}]"
                else:
                    instead = " and ".join(
                        f'{_key_text(texts[n])} = [..., "{texts[main]}"]' for n in others
                    )
                self.error(
                    mention[others[0]],
                    f"the label order has {len(plain)} {word}s ({names}); it needs exactly one",
                    instead,
                )
                ok = False
        return ok

    def check_joins(self, lattice: Lattice) -> None:
        # Workflows join the labels of Parallel branches; where the order is not a lattice the
        # engine would have to fail at run time, so say where now.
        missing = lattice.missing_joins()
        for a, b in missing[:5]:
            self.warn(
                self.loc.section(("labels",)),
                f"labels '{a}' and '{b}' have no least upper bound, which a workflow needs "
                f"to join the labels of Parallel branches",
                "a single label directly above both in [labels]",
            )
        if len(missing) > 5:
            self.warn(
                self.loc.section(("labels",)),
                f"... and {len(missing) - 5} more label pairs without a least upper bound",
                "a lattice (every pair has a least upper bound)",
            )

    # ----------------------------------------------------------------- [principals.*]
    def load_principals(self, raw: dict[str, Any]) -> dict[str, PrincipalSpec]:
        out: dict[str, PrincipalSpec] = {}
        tokens: dict[str, str] = {}
        for name, value in raw.items():
            at = _At(("principals", name))
            name_ok = self.name_ok(name, at, _PRINCIPAL_RE, "principal")
            tbl = self.table(value, at, _PRINCIPAL, required=("label",))
            if tbl is None:
                continue
            label = self.label(tbl, at, _PRINCIPAL, "label")
            token = self.string(tbl, at, _PRINCIPAL, "token")
            if token is not None:
                if token in tokens:
                    self.error(
                        self.line(at, "token"),
                        f"principal '{name}' has the same token as '{tokens[token]}', so a "
                        f"request with it could not say who it is",
                        'a different token = "..."',
                    )
                    continue
                tokens[token] = name
            if name_ok and label is not None:
                out[name] = PrincipalSpec(name, label, token, dev_only=token is not None)
        return out

    # ----------------------------------------------------------------- [channels.*]
    def load_channels(self, raw: dict[str, Any]) -> dict[str, ChannelSpec]:
        out: dict[str, ChannelSpec] = {}
        for name, value in raw.items():
            at = _At(("channels", name))
            ok = self.name_ok(name, at, _NAME_RE, "channel")
            if name == RESPONSE_CHANNEL:
                self.error(
                    self.line(at),
                    f"'{RESPONSE_CHANNEL}' is the built-in channel for the reply to the "
                    f"invoker and cannot be declared",
                    "another name, like [channels.reply_email]",
                )
                ok = False
            tbl = self.table(value, at, _CHANNEL, required=("kind", "bound"))
            if tbl is None:
                continue
            kind = self.string(tbl, at, _CHANNEL, "kind")
            bound = self.label(tbl, at, _CHANNEL, "bound")
            timeout = self.number(tbl, at, _CHANNEL, "timeout", 300.0, 10.0)
            if kind is None:
                continue
            if kind not in ("smtp", "http"):
                close = _suggest(kind, ("smtp", "http"))
                self.error(
                    self.line(at, "kind"),
                    f"unknown channel kind '{kind}' in {at.title}",
                    f'kind = "{close}"' if close else 'kind = "http" or kind = "smtp"',
                )
                continue
            other = _CHANNEL_HTTP if kind == "smtp" else _CHANNEL_SMTP
            for key in tbl:
                if key in other:
                    self.error(
                        self.line(at, key),
                        f"'{key}' does not apply to a {kind} channel ({at.title})",
                        f"no {key} line here, or kind = \"{'http' if kind == 'smtp' else 'smtp'}\"",
                    )
                    ok = False
            if kind == "smtp":
                spec = self.smtp_channel(tbl, at, name, bound, timeout)
            else:
                spec = self.http_channel(tbl, at, name, bound, timeout)
            if ok and spec is not None:
                out[name] = spec
        return out

    def smtp_channel(
        self, tbl: dict[str, Any], at: _At, name: str, bound: str | None, timeout: float
    ) -> ChannelSpec | None:
        if "host" not in tbl:
            self.error(
                self.line(at),
                f"smtp channel {at.title} has no 'host'",
                f"host = {_CHANNEL_SMTP['host']}",
            )
        host = self.string(tbl, at, _CHANNEL, "host")
        port = self.integer(tbl, at, _CHANNEL, "port", 1, 65535, 25)
        sender = self.string(tbl, at, _CHANNEL, "sender")
        if sender is not None and "@" not in sender:
            self.error(
                self.line(at, "sender"),
                f"'sender' = '{sender}' in {at.title} is not an email address",
                f"sender = {_CHANNEL_SMTP['sender']}",
            )
            return None
        if host is None or bound is None:
            return None
        return ChannelSpec(name, "smtp", bound, host=host, port=port, sender=sender,
                           timeout=timeout)

    def http_channel(
        self, tbl: dict[str, Any], at: _At, name: str, bound: str | None, timeout: float
    ) -> ChannelSpec | None:
        max_bytes = self.integer(
            tbl, at, _CHANNEL, "max_response_bytes", 1, 1 << 30, 10 * 1024 * 1024
        )
        prefixes = self.strings(tbl, at, _CHANNEL, "url_prefixes")
        if "url_prefixes" not in tbl or prefixes == []:
            self.error(
                self.line(at, "url_prefixes" if "url_prefixes" in tbl else None),
                f"http channel {at.title} names no 'url_prefixes' it may reach",
                f"url_prefixes = {_CHANNEL_HTTP['url_prefixes']}",
            )
            return None
        if prefixes is None:
            return None
        good: list[str] = []
        for prefix in prefixes:
            normal = _normal_prefix(prefix)
            if normal is None:
                host = urlsplit(prefix).netloc or prefix.split("/")[0] or "host.example"
                self.error(
                    self.line(at, "url_prefixes", prefix),
                    f"url prefix '{prefix}' in {at.title} is not an http(s) URL with a host",
                    f'"https://{host}/"',
                )
            else:
                good.append(normal)
        if len(good) != len(prefixes) or bound is None:
            return None
        return ChannelSpec(name, "http", bound, url_prefixes=tuple(good), timeout=timeout,
                           max_response_bytes=max_bytes)

    # ----------------------------------------------------------------- [functions.*]
    def load_functions(self, raw: dict[str, Any]) -> dict[str, FunctionSpec]:
        out: dict[str, FunctionSpec] = {}
        for name, value in raw.items():
            at = _At(("functions", name))
            ok = self.name_ok(name, at, _NAME_RE, "function")
            tbl = self.table(value, at, _FUNCTION, required=("handler",))
            if tbl is None:
                continue
            handler = self.string(tbl, at, _FUNCTION, "handler")
            resolved = self.handler(handler, at, name) if handler is not None else None
            timeout = self.number(tbl, at, _FUNCTION, "timeout", 900.0, 10.0)
            memory = self.integer(tbl, at, _FUNCTION, "memory_mb", 16, 65536, 256)
            executables = self.executables(tbl, at)
            env = self.env(tbl, at)
            preload = self.preload(tbl, at)
            concurrency = self.integer(tbl, at, _FUNCTION, "concurrency", 1, 10000, 16)
            retries = self.integer(tbl, at, _FUNCTION, "retries", 0, 100, 2)
            prefork = self.integer(tbl, at, _FUNCTION, "prefork", 0, 64, 1)
            if ok and resolved is not None and handler is not None:
                module_file, module_name, attr = resolved
                out[name] = FunctionSpec(
                    name=name,
                    handler=handler,
                    module_file=module_file,
                    module_name=module_name,
                    callable=attr,
                    timeout=timeout,
                    memory_mb=memory,
                    executables=executables,
                    env=env,
                    preload=preload,
                    concurrency=concurrency,
                    retries=retries,
                    prefork=prefork,
                )
        return out

    def handler(self, text: str, at: _At, fname: str) -> tuple[Path, str, str] | None:
        line = self.line(at, "handler")
        module, sep, attr = text.rpartition(":")
        example = f'handler = "functions/{fname}.py:handler"'
        if not sep or not module:
            self.error(
                line,
                f"handler '{text}' of function '{fname}' must name a file and a callable, "
                f"separated by ':'",
                example,
            )
            return None
        if not attr.isidentifier() or keyword.iskeyword(attr):
            fixed = re.sub(r"\W+", "_", attr).strip("_") or "handler"
            if fixed[0].isdigit() or keyword.iskeyword(fixed):
                fixed = "handler_" + fixed
            self.error(
                line,
                f"'{attr}' in handler '{text}' is not a valid Python function name",
                f'handler = "{module}:{fixed}"',
            )
            return None
        if module.endswith(".py"):
            rel = module
            module_name = module[:-3].replace("/", ".")
        else:
            parts = module.split(".")
            if not all(p.isidentifier() for p in parts):
                self.error(
                    line,
                    f"'{module}' in handler '{text}' is neither a .py path nor a dotted module",
                    example,
                )
                return None
            rel = "/".join(parts) + ".py"
            if not (self.root / rel).is_file() and (self.root / "/".join(parts)).is_dir():
                rel = "/".join(parts) + "/__init__.py"
            module_name = module
        file = self.app_file(rel, at, "handler", (".py",))
        if file is None:
            return None
        found = self.top_level_names(file)
        if found is not None:
            names, star = found
            if attr not in names and not star:
                close = _suggest(attr, [n for n in names if not n.startswith("_")])
                self.error(
                    line,
                    f"handler '{text}': {self.display(file)} defines no '{attr}'",
                    f'handler = "{module}:{close}"'
                    if close
                    else f"def {attr}(event, context): ... in {self.display(file)}",
                )
                return None
        return file, module_name, attr

    def executables(self, tbl: dict[str, Any], at: _At) -> tuple[str, ...]:
        out: list[str] = []
        for exe in self.strings(tbl, at, _FUNCTION, "executables") or []:
            if not os.path.isabs(exe):
                self.error(
                    self.line(at, "executables", exe),
                    f"executable '{exe}' in {at.title} must be an absolute path",
                    f'"/usr/bin/{Path(exe).name}"',
                )
                continue
            if not os.path.exists(exe):
                self.warn(
                    self.line(at, "executables", exe),
                    f"executable '{exe}' in {at.title} does not exist on this machine",
                    "the path where the binary is installed",
                )
            out.append(exe)
        return tuple(out)

    def env(self, tbl: dict[str, Any], at: _At) -> dict[str, str]:
        raw = self.typed(tbl, at, _FUNCTION, "env", lambda x: isinstance(x, dict), "a table")
        if raw is _MISSING:
            return {}
        out: dict[str, str] = {}
        for key, value in raw.items():
            if not _ENV_RE.match(key):
                fixed = re.sub(r"\W+", "_", key).upper().strip("_") or "NAME"
                self.error(
                    self.line(at, "env"),
                    f"environment variable name '{key}' in {at.title} is invalid",
                    f'env = {{ {fixed} = "..." }}',
                )
            elif not isinstance(value, str):
                self.error(
                    self.line(at, "env"),
                    f"environment variable '{key}' in {at.title} must be a string, "
                    f"got {_toml_type(value)}",
                    f'env = {{ {key} = "{value}" }}',
                )
            else:
                out[key] = value
        return out

    def preload(self, tbl: dict[str, Any], at: _At) -> tuple[str, ...]:
        out: list[str] = []
        for mod in self.strings(tbl, at, _FUNCTION, "preload") or []:
            if not all(p.isidentifier() for p in mod.split(".")):
                self.error(
                    self.line(at, "preload", mod),
                    f"'{mod}' in 'preload' of {at.title} is not a module name",
                    '"json" or "PIL.Image"',
                )
            else:
                out.append(mod)
        return tuple(out)

    # ----------------------------------------------------------------- [[routes]]
    def load_routes(self, raw: object) -> list[RouteSpec]:
        if not (isinstance(raw, list) and all(isinstance(r, dict) for r in raw)):
            self.error(
                self.loc.section(("routes",)),
                "'routes' must be an array of tables",
                '[[routes]] blocks, each with path = "/x" and function = "NAME"',
            )
            return []
        out: list[RouteSpec] = []
        seen: dict[tuple[str, str], int] = {}
        for i, value in enumerate(raw):
            at = _At(("routes",), nth=i)
            tbl = self.table(value, at, _ROUTE, required=("path", "function"))
            if tbl is None:
                continue
            ok = True
            path = self.string(tbl, at, _ROUTE, "path")
            if path is not None and not self.route_path(path, at):
                ok = False
            methods = self.methods(tbl, at)
            function = self.string(tbl, at, _ROUTE, "function")
            if function is not None and function not in self.function_names:
                self.unknown_ref(
                    self.line(at, "function"), function, self.function_names, "function",
                    f"in {at.title}",
                )
                ok = False
            anonymous = self.boolean(tbl, at, _ROUTE, "anonymous", False)
            max_body = self.integer(tbl, at, _ROUTE, "max_body_bytes", 0, 1 << 30, 1024 * 1024)
            if path is None or methods is None or function is None or not ok:
                continue
            shape = _PARAM_RE.sub("{}", path)
            dup = False
            for method in methods:
                first = seen.get((shape, method))
                if first is not None:
                    self.error(
                        self.line(at, "path"),
                        f"route {method} {path} is already declared by [[routes]] #{first + 1} "
                        f"(line {self.loc.line(('routes',), 'path', nth=first)})",
                        "a different path or method, or remove one of the two routes",
                    )
                    dup = True
                else:
                    seen[(shape, method)] = i
            if not dup:
                out.append(RouteSpec(path, methods, function, anonymous, max_body))
        return out

    def route_path(self, path: str, at: _At) -> bool:
        line = self.line(at, "path")
        fixed = "/" + path.strip().lstrip("/").split("?")[0].split("#")[0].replace(" ", "-")
        if not path.startswith("/") or any(c in path for c in " ?#\t"):
            self.error(
                line,
                f"route path '{path}' must start with '/' and contain no spaces, '?' or '#'",
                f'path = "{fixed}"',
            )
            return False
        if path.startswith(RESERVED_ROUTE_PREFIX):
            self.error(
                line,
                f"route path '{path}' is under {RESERVED_ROUTE_PREFIX}/, which the platform "
                f"reserves for its own API",
                f'path = "{path[len(RESERVED_ROUTE_PREFIX):] or "/"}"',
            )
            return False
        if _PARAM_RE.sub("", path).count("{") or _PARAM_RE.sub("", path).count("}"):
            self.error(line, f"route path '{path}' has an unbalanced '{{' or '}}'",
                       'path = "/items/{id}"')
            return False
        params: list[str] = []
        for param in _PARAM_RE.findall(path):
            pname, _, conv = param.partition(":")
            if not pname.isidentifier() or (conv and conv not in ROUTE_CONVERTERS):
                self.error(
                    line,
                    f"route parameter '{{{param}}}' in '{path}' must be {{name}} or "
                    f"{{name:{'|'.join(ROUTE_CONVERTERS)}}}",
                    f'path = "{_PARAM_RE.sub("{id}", path, count=1)}"',
                )
                return False
            if pname in params:
                self.error(line, f"route parameter '{pname}' appears twice in '{path}'",
                           f"another name for the second '{{{pname}}}'")
                return False
            params.append(pname)
        return True

    def methods(self, tbl: dict[str, Any], at: _At) -> tuple[str, ...] | None:
        raw = self.strings(tbl, at, _ROUTE, "methods")
        if "methods" not in tbl:
            return ("POST",)
        if raw is None:
            return None
        if not raw:
            self.error(self.line(at, "methods"), f"'methods' in {at.title} is empty",
                       'methods = ["POST"]')
            return None
        out: list[str] = []
        ok = True
        for m in raw:
            if m.upper() not in HTTP_METHODS:
                close = _suggest(m.upper(), HTTP_METHODS)
                self.error(
                    self.line(at, "methods", m),
                    f"unknown HTTP method '{m}' in {at.title}",
                    f'"{close}"' if close else f"one of {', '.join(HTTP_METHODS)}",
                )
                ok = False
            elif m.upper() not in out:
                out.append(m.upper())
        return tuple(out) if ok else None

    # ----------------------------------------------------------------- [declassifiers.*]
    def load_declassifiers(
        self, raw: dict[str, Any], channels: dict[str, ChannelSpec], policy: Path | None
    ) -> dict[str, DeclassifierSpec]:
        out: dict[str, DeclassifierSpec] = {}
        policy_names: tuple[set[str], bool] | None = None
        if policy is not None:
            policy_names = self.top_level_names(policy)
        told_no_policy = False
        for name, value in raw.items():
            at = _At(("declassifiers", name))
            ok = self.name_ok(name, at, _NAME_RE, "declassifier")
            tbl = self.table(
                value, at, _DECLASSIFIER, required=("channel", "function", "max_label", "bound")
            )
            if tbl is None:
                continue
            channel = self.string(tbl, at, _DECLASSIFIER, "channel")
            if (
                channel is not None
                and channel != RESPONSE_CHANNEL
                and channel not in self.channel_names
            ):
                self.unknown_ref(
                    self.line(at, "channel"),
                    channel,
                    self.channel_names | {RESPONSE_CHANNEL},
                    "channel",
                    f"in {at.title}",
                )
                ok = False
            func = self.string(tbl, at, _DECLASSIFIER, "function")
            if func is not None:
                ok &= self.policy_callable(func, at, policy, policy_names, told_no_policy)
                told_no_policy = told_no_policy or policy is None
            max_label = self.label(tbl, at, _DECLASSIFIER, "max_label")
            bound = self.label(tbl, at, _DECLASSIFIER, "bound")
            if None in (channel, func, max_label, bound) or not ok:
                continue
            assert channel is not None and func is not None  # for the type checker
            assert max_label is not None and bound is not None
            target = channels.get(channel)
            lat = self.lattice
            if target is not None and lat is not None and not lat.flows(bound, target.bound):
                self.error(
                    self.line(at, "bound"),
                    f"declassifier '{name}' lowers to '{bound}', which still may not flow to "
                    f"channel '{channel}' (bound '{target.bound}'), so it could never release "
                    f"anything",
                    f'bound = "{target.bound}"',
                )
                continue
            if lat is not None and lat.flows(max_label, bound):
                self.warn(
                    self.line(at, "max_label"),
                    f"declassifier '{name}' has max_label '{max_label}' ⊑ bound '{bound}': "
                    f"it never lowers anything",
                    "a max_label above the bound",
                )
            out[name] = DeclassifierSpec(name, channel, func, max_label, bound)
        return out

    def policy_callable(
        self,
        func: str,
        at: _At,
        policy: Path | None,
        names: tuple[set[str], bool] | None,
        told_no_policy: bool,
    ) -> bool:
        line = self.line(at, "function")
        if not func.isidentifier() or keyword.iskeyword(func):
            self.error(line, f"'{func}' in {at.title} is not a valid Python function name",
                       f"function = {_DECLASSIFIER['function']}")
            return False
        if policy is None:
            if not told_no_policy:
                self.error(
                    line,
                    f"declassifier {at.title} names function '{func}', but [app] declares no "
                    f"policy module",
                    'policy = "policy.py" in [app]',
                )
            return False
        if names is None:  # the policy file has a syntax error, reported there
            return False
        defined, star = names
        if func not in defined and not star:
            close = _suggest(func, [n for n in defined if not n.startswith("_")])
            self.error(
                line,
                f"function '{func}' of {at.title} is not defined in {self.display(policy)}",
                f'function = "{close}"'
                if close
                else f"def {func}(value, info): ... in the policy module",
            )
            return False
        return True

    # ----------------------------------------------------------------- [streams.*]
    def load_streams(self, raw: dict[str, Any]) -> dict[str, StreamSpec]:
        out: dict[str, StreamSpec] = {}
        for name, value in raw.items():
            at = _At(("streams", name))
            ok = self.name_ok(name, at, _NAME_RE, "stream")
            tbl = self.table(value, at, _STREAM)
            if tbl is None:
                continue
            consumers = self.names(tbl, at, _STREAM, "consumers", self.function_names, "function")
            batch = self.integer(tbl, at, _STREAM, "batch_size", 1, 10000, 10)
            attempts = self.integer(tbl, at, _STREAM, "max_attempts", 1, 1000, 5)
            size = self.integer(tbl, at, _STREAM, "max_record_bytes", 1, 16 << 20, 256 * 1024)
            if ok:
                out[name] = StreamSpec(name, consumers, batch, attempts, size)
        return out

    # ----------------------------------------------------------------- [workflows.*]
    def load_workflows(self, raw: dict[str, Any]) -> dict[str, WorkflowSpec]:
        out: dict[str, WorkflowSpec] = {}
        for name, value in raw.items():
            at = _At(("workflows", name))
            ok = self.name_ok(name, at, _NAME_RE, "workflow")
            tbl = self.table(value, at, _WORKFLOW, required=("definition",))
            if tbl is None:
                continue
            start_from = self.names(tbl, at, _WORKFLOW, "start_from", self.function_names,
                                    "function")
            text = self.string(tbl, at, _WORKFLOW, "definition")
            if text is None:
                continue
            file = self.app_file(text, at, "definition", (".json", ".yaml", ".yml"))
            if file is None:
                continue
            document = self.asl_document(file)
            if ok and document is not None:
                out[name] = WorkflowSpec(name, file, start_from, document)
        return out

    def asl_document(self, file: Path) -> dict[str, Any] | None:
        shown = self.display(file)
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            self.error(1, f"cannot read workflow definition: {exc}", "a UTF-8 text file",
                       file=shown)
            return None
        doc: object
        if file.suffix == ".json":
            try:
                doc = json.loads(text)
            except json.JSONDecodeError as exc:
                self.error(exc.lineno, f"JSON syntax error: {exc.msg}", "valid JSON at this line",
                           file=shown)
                return None
        else:
            try:
                import yaml  # PyYAML; only needed for workflows written in YAML
            except ImportError:
                self.error(1, "reading a YAML workflow needs PyYAML (pip install pyyaml)",
                           "the workflow as .json", file=shown)
                return None
            try:
                doc = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                self.error(
                    (mark.line + 1) if mark is not None else 1,
                    f"YAML syntax error: {getattr(exc, 'problem', None) or exc}",
                    "valid YAML at this line",
                    file=shown,
                )
                return None
        if not isinstance(doc, dict):
            self.error(1, "a workflow definition must be a mapping with StartAt and States",
                       '{"StartAt": "First", "States": {"First": {...}}}', file=shown)
            return None
        ok = True
        if not isinstance(doc.get("StartAt"), str):
            self.error(_doc_line(text, "StartAt"),
                       "the workflow definition needs StartAt, the name of its first state",
                       '"StartAt": "First"', file=shown)
            ok = False
        if not (isinstance(doc.get("States"), dict) and doc["States"]):
            self.error(_doc_line(text, "States"),
                       "the workflow definition needs States, a mapping of state names to states",
                       '"States": {"First": {"Type": "Pass", "End": true}}', file=shown)
            ok = False
        return doc if ok else None

    # ----------------------------------------------------------------- [limits]
    def load_limits(self, raw: object) -> LimitsSpec:
        at = _At(("limits",))
        tbl = self.table(raw, at, _LIMITS)
        if tbl is None:
            return LimitsSpec()
        return LimitsSpec(
            concurrency=self.integer(tbl, at, _LIMITS, "concurrency", 1, 100000, 64),
            queue=self.integer(tbl, at, _LIMITS, "queue", 0, 1_000_000, 256),
            workflow_executions=self.integer(tbl, at, _LIMITS, "workflow_executions", 1,
                                             1_000_000, 1000),
        )


def _normal_prefix(prefix: str) -> str | None:
    """An http(s) URL prefix with a host, its authority closed by '/'; None if not one."""
    try:
        parts = urlsplit(prefix)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    if parts.username or parts.password or parts.query or parts.fragment:
        return None
    # Without the slash, "http://a.test" would also be a prefix of "http://a.test.evil/".
    return prefix if parts.path else prefix + "/"


def _doc_line(text: str, key: str) -> int:
    for i, line in enumerate(text.splitlines(), start=1):
        if key in line:
            return i
    return 1
