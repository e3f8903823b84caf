"""Amazon States Language: the subset Trapeze runs, parsed and validated at load.

Supported states: Task, Choice, Pass, Parallel, Wait, Succeed, Fail, with InputPath,
Parameters (``"key.$": "$.path"`` and ``"$$."`` context paths), ResultSelector, ResultPath,
OutputPath, Retry, Catch and TimeoutSeconds. A Task's Resource is a function name of the app,
``activity:NAME`` (an activity: a worker polls for it and completes it by its token), or
``NAME.waitForTaskToken`` / ``arn:aws:states:::lambda:invoke.waitForTaskToken`` with
``Parameters.FunctionName`` (a callback task: the function gets the token, the task waits for
it to be completed).

Every problem is reported with the name of the state it is in (``Branches[i]/State`` inside
a Parallel), all at once, as one :class:`AslError`.
"""

from __future__ import annotations

import copy
import fnmatch
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from trapeze.errors import ConfigError

STATE_TYPES = ("Task", "Choice", "Pass", "Parallel", "Wait", "Succeed", "Fail")
_TERMINAL = ("Succeed", "Fail")
_WAIT_KEYS = ("Seconds", "SecondsPath", "Timestamp", "TimestampPath")
_LAMBDA_CALLBACK = "arn:aws:states:::lambda:invoke.waitForTaskToken"
_ACTIVITY_ARN = re.compile(r"^arn:aws:states:[^:]*:[^:]*:activity:(?P<name>[A-Za-z0-9_.-]+)$")

# Choice comparison operators: name -> kind of the literal
_COMPARISONS = {
    "StringEquals": str, "StringLessThan": str, "StringGreaterThan": str,
    "StringLessThanEquals": str, "StringGreaterThanEquals": str, "StringMatches": str,
    "NumericEquals": (int, float), "NumericLessThan": (int, float),
    "NumericGreaterThan": (int, float), "NumericLessThanEquals": (int, float),
    "NumericGreaterThanEquals": (int, float),
    "BooleanEquals": bool,
    "IsPresent": bool, "IsNull": bool, "IsString": bool, "IsNumeric": bool, "IsBoolean": bool,
}
_PATH_COMPARISONS = {
    k + "Path" for k in _COMPARISONS if not k.startswith("Is") and k != "StringMatches"
}


class AslError(ConfigError):
    """An invalid workflow definition; `problems` lists every error, each naming its state."""

    def __init__(self, workflow: str, problems: list[str]) -> None:
        self.workflow = workflow
        self.problems = problems
        super().__init__(f"workflow {workflow!r}: " + "; ".join(problems))


class PathError(ValueError):
    """A path does not apply to the data (a States.Runtime error when running)."""


# ====================================================================== model
@dataclass(frozen=True)
class Retrier:
    errors: tuple[str, ...]
    interval: float = 1.0
    max_attempts: int = 3
    backoff: float = 2.0


@dataclass(frozen=True)
class Catcher:
    errors: tuple[str, ...]
    next: str
    result_path: str | None = "$"


@dataclass(frozen=True)
class TaskTarget:
    kind: str  # "function" | "activity" | "callback"
    name: str  # the function, or the activity


@dataclass(frozen=True)
class State:
    name: str
    type: str
    raw: Mapping[str, Any]
    next: str | None = None
    end: bool = False
    target: TaskTarget | None = None
    retry: tuple[Retrier, ...] = ()
    catch: tuple[Catcher, ...] = ()
    branches: tuple[Machine, ...] = ()
    timeout: float | None = None

    def get(self, key: str, default: Any = None) -> Any:
        return self.raw.get(key, default)


@dataclass(frozen=True)
class Machine:
    start_at: str
    states: dict[str, State] = field(default_factory=dict)


# ====================================================================== validation
def parse(doc: Any, workflow: str, functions: Collection[str] | None = None) -> Machine:
    """Validate `doc` and build the machine, or raise AslError listing every problem."""
    problems: list[str] = []
    machine = _parse_machine(doc, "", problems, functions)
    if problems or machine is None:
        raise AslError(workflow, problems or ["the definition is not a state machine"])
    return machine


def _parse_machine(doc: Any, where: str, problems: list[str],
                   functions: Collection[str] | None) -> Machine | None:
    def err(msg: str) -> None:
        problems.append(f"{where}{msg}")

    if not isinstance(doc, Mapping):
        err("a state machine must be a mapping with StartAt and States")
        return None
    raw_states = doc.get("States")
    if not isinstance(raw_states, Mapping) or not raw_states:
        err("missing States: a mapping of state names to states")
        return None
    start = doc.get("StartAt")
    if not isinstance(start, str):
        err("missing StartAt: the name of the first state")
        start = None
    elif start not in raw_states:
        err(f"StartAt names an unknown state {start!r}")
    states: dict[str, State] = {}
    for name, raw in raw_states.items():
        st = _parse_state(str(name), raw, raw_states, f"{where}state {name!r}: ", problems,
                          functions)
        if st is not None:
            states[str(name)] = st
    if isinstance(start, str) and start in raw_states:
        reachable = _reachable(start, states)
        for name in raw_states:
            if name not in reachable and name in states:
                err(f"state {name!r} is unreachable from StartAt {start!r}")
    if start is None:
        return None
    return Machine(start, states)


def _reachable(start: str, states: Mapping[str, State]) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        st = states.get(todo.pop())
        if st is None:
            continue
        nxt = [st.next] if st.next else []
        nxt += [c.next for c in st.catch]
        if st.type == "Choice":
            nxt += [c.get("Next") for c in st.get("Choices") or [] if isinstance(c, Mapping)]
            if st.get("Default"):
                nxt.append(st.get("Default"))
        for n in nxt:
            if isinstance(n, str) and n not in seen:
                seen.add(n)
                todo.append(n)
    return seen


def _parse_state(name: str, raw: Any, all_states: Mapping[str, Any], where: str,
                 problems: list[str], functions: Collection[str] | None) -> State | None:
    def err(msg: str) -> None:
        problems.append(where + msg)

    if not isinstance(raw, Mapping):
        err("a state must be a mapping with a Type")
        return None
    typ = raw.get("Type")
    if typ not in STATE_TYPES:
        err(f"unsupported Type {typ!r} (supported: {', '.join(STATE_TYPES)})")
        return None

    def known(target: Any, what: str) -> str | None:
        if not isinstance(target, str):
            err(f"{what} must be a state name")
            return None
        if target not in all_states:
            err(f"{what} names an unknown state {target!r}")
            return None
        return target

    nxt: str | None = None
    end = False
    if typ in _TERMINAL:
        if "Next" in raw or "End" in raw:
            err(f"a {typ} state ends the machine; remove Next/End")
    elif typ == "Choice":
        if "Next" in raw or "End" in raw:
            err("a Choice state takes no Next or End; use Choices and Default")
        choices = raw.get("Choices")
        if not isinstance(choices, list) or not choices:
            err("Choices must be a non-empty list of rules")
        else:
            for i, rule in enumerate(choices):
                if not isinstance(rule, Mapping):
                    err(f"Choices[{i}] must be a mapping")
                    continue
                known(rule.get("Next"), f"Choices[{i}].Next")
                _check_rule(rule, f"Choices[{i}]", err, top=True)
        if "Default" in raw:
            known(raw["Default"], "Default")
    else:
        has_next, end = "Next" in raw, raw.get("End") is True
        if has_next and end:
            err("has both Next and End; keep one")
        elif has_next:
            nxt = known(raw["Next"], "Next")
        elif not end:
            err("needs Next (the following state) or \"End\": true")

    for key in ("InputPath", "OutputPath", "ResultPath"):
        if key in raw and raw[key] is not None and not _is_path(raw[key]):
            err(f"{key} must be a path starting with '$' (or null)")

    target = None
    timeout = None
    if typ == "Task":
        target = _parse_target(raw, functions, err)
        t = raw.get("TimeoutSeconds")
        if t is not None:
            if type(t) is not int or t <= 0:
                err("TimeoutSeconds must be a positive integer")
            else:
                timeout = float(t)
    if typ == "Wait":
        given = [k for k in _WAIT_KEYS if k in raw]
        if len(given) != 1:
            err("a Wait state needs exactly one of Seconds, SecondsPath, Timestamp,"
                " TimestampPath")
        elif given[0] == "Seconds" and (type(raw["Seconds"]) not in (int, float)
                                        or raw["Seconds"] < 0):
            err("Seconds must be a non-negative number")
        elif given[0].endswith("Path") and not _is_path(raw[given[0]]):
            err(f"{given[0]} must be a path starting with '$'")
    if typ == "Fail":
        for key in ("Error", "Cause"):
            if key in raw and not isinstance(raw[key], str):
                err(f"{key} must be a string")

    retry: list[Retrier] = []
    catch: list[Catcher] = []
    if typ in ("Task", "Parallel"):
        for i, r in enumerate(_list(raw.get("Retry"), "Retry", err)):
            errors = _error_names(r, f"Retry[{i}]", err)
            interval = r.get("IntervalSeconds", 1) if isinstance(r, Mapping) else 1
            attempts = r.get("MaxAttempts", 3) if isinstance(r, Mapping) else 3
            backoff = r.get("BackoffRate", 2.0) if isinstance(r, Mapping) else 2.0
            if type(interval) not in (int, float) or interval < 0:
                err(f"Retry[{i}].IntervalSeconds must be a non-negative number")
                interval = 1
            if type(attempts) is not int or attempts < 0:
                err(f"Retry[{i}].MaxAttempts must be a non-negative integer")
                attempts = 0
            if type(backoff) not in (int, float) or backoff < 1:
                err(f"Retry[{i}].BackoffRate must be a number >= 1")
                backoff = 1.0
            retry.append(Retrier(errors, float(interval), attempts, float(backoff)))
        for i, c in enumerate(_list(raw.get("Catch"), "Catch", err)):
            errors = _error_names(c, f"Catch[{i}]", err)
            target_state = known(c.get("Next") if isinstance(c, Mapping) else None,
                                 f"Catch[{i}].Next")
            rp = c.get("ResultPath", "$") if isinstance(c, Mapping) else "$"
            if rp is not None and not _is_path(rp):
                err(f"Catch[{i}].ResultPath must be a path starting with '$' (or null)")
            if target_state:
                catch.append(Catcher(errors, target_state, rp))
    elif "Retry" in raw or "Catch" in raw:
        err(f"a {typ} state cannot have Retry or Catch")

    branches: list[Machine] = []
    if typ == "Parallel":
        raw_branches = raw.get("Branches")
        if not isinstance(raw_branches, list) or not raw_branches:
            err("Branches must be a non-empty list of state machines")
        else:
            for i, b in enumerate(raw_branches):
                m = _parse_machine(b, f"{where}Branches[{i}]: ", problems, functions)
                if m is not None:
                    branches.append(m)
    if typ in ("Task", "Parallel", "Pass") and "Parameters" in raw:
        _check_template(raw["Parameters"], "Parameters", err)
    if "ResultSelector" in raw:
        _check_template(raw["ResultSelector"], "ResultSelector", err)
    return State(name, typ, raw, nxt, end, target, tuple(retry), tuple(catch),
                 tuple(branches), timeout)


def _parse_target(raw: Mapping[str, Any], functions: Collection[str] | None,
                  err: Any) -> TaskTarget | None:
    res = raw.get("Resource")
    if not isinstance(res, str) or not res:
        err("a Task needs Resource: a function name, activity:NAME or NAME.waitForTaskToken")
        return None
    m = _ACTIVITY_ARN.match(res)
    if res.startswith("activity:") or m:
        name = m.group("name") if m else res[len("activity:"):]
        if not name:
            err(f"Resource {res!r} names no activity")
            return None
        return TaskTarget("activity", name)
    kind, fn = "function", res
    if res == _LAMBDA_CALLBACK:
        params = raw.get("Parameters")
        fn = params.get("FunctionName") if isinstance(params, Mapping) else None
        kind = "callback"
        if not isinstance(fn, str):
            err(f"Resource {res!r} needs Parameters.FunctionName")
            return None
    elif res.endswith(".waitForTaskToken"):
        kind, fn = "callback", res[: -len(".waitForTaskToken")]
    if functions is not None and fn not in functions:
        err(f"Resource names an unknown function {fn!r}")
        return None
    return TaskTarget(kind, fn)


def _list(value: Any, key: str, err: Any) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        err(f"{key} must be a list")
        return []
    return value


def _error_names(rule: Any, where: str, err: Any) -> tuple[str, ...]:
    names = rule.get("ErrorEquals") if isinstance(rule, Mapping) else None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        err(f"{where}.ErrorEquals must be a non-empty list of error names")
        return ()
    if "States.ALL" in names and len(names) != 1:
        err(f"{where}.ErrorEquals: States.ALL must appear alone")
    return tuple(names)


def _check_rule(rule: Mapping[str, Any], where: str, err: Any, *, top: bool) -> None:
    for combinator in ("And", "Or"):
        if combinator in rule:
            subs = rule[combinator]
            if not isinstance(subs, list) or not subs:
                err(f"{where}.{combinator} must be a non-empty list of rules")
                return
            for i, sub in enumerate(subs):
                if isinstance(sub, Mapping):
                    _check_rule(sub, f"{where}.{combinator}[{i}]", err, top=False)
                else:
                    err(f"{where}.{combinator}[{i}] must be a mapping")
            return
    if "Not" in rule:
        if isinstance(rule["Not"], Mapping):
            _check_rule(rule["Not"], f"{where}.Not", err, top=False)
        else:
            err(f"{where}.Not must be a rule")
        return
    ops = [k for k in rule if k in _COMPARISONS or k in _PATH_COMPARISONS]
    if len(ops) != 1:
        err(f"{where} needs exactly one comparison (like StringEquals) or And/Or/Not")
        return
    if not _is_path(rule.get("Variable")):
        err(f"{where}.Variable must be a path starting with '$'")
    op = ops[0]
    val = rule[op]
    if op in _PATH_COMPARISONS:
        if not _is_path(val):
            err(f"{where}.{op} must be a path")
    elif type(val) is bool and _COMPARISONS[op] is not bool:
        err(f"{where}.{op} takes a {_kind_name(_COMPARISONS[op])}")
    elif not isinstance(val, _COMPARISONS[op]):  # type: ignore[arg-type]
        err(f"{where}.{op} takes a {_kind_name(_COMPARISONS[op])}")


def _kind_name(kind: Any) -> str:
    return {str: "string", bool: "boolean"}.get(kind, "number")


def _check_template(tpl: Any, where: str, err: Any) -> None:
    if isinstance(tpl, Mapping):
        for k, v in tpl.items():
            if isinstance(k, str) and k.endswith(".$"):
                if not (isinstance(v, str) and (v.startswith("$"))):
                    err(f"{where}: {k!r} must be a path starting with '$' or '$$'")
            else:
                _check_template(v, f"{where}.{k}", err)
    elif isinstance(tpl, list):
        for i, v in enumerate(tpl):
            _check_template(v, f"{where}[{i}]", err)


def _is_path(p: Any) -> bool:
    if not isinstance(p, str) or not p.startswith("$"):
        return False
    try:
        _tokens(p[2:] if p.startswith("$$") else p[1:])
    except PathError:
        return False
    return True


# ====================================================================== paths
_TOKEN = re.compile(r"\.([A-Za-z_][\w-]*)|\[(\d+)\]|\['([^']*)'\]|\[\"([^\"]*)\"\]")


def _tokens(rest: str) -> list[str | int]:
    out: list[str | int] = []
    pos = 0
    while pos < len(rest):
        m = _TOKEN.match(rest, pos)
        if not m:
            raise PathError(f"unsupported path syntax at {rest[pos:]!r}")
        name, idx, q1, q2 = m.groups()
        out.append(int(idx) if idx is not None else (name or q1 or q2 or ""))
        pos = m.end()
    return out


_MISSING = object()


def get_path(data: Any, path: str, context: Any = None) -> Any:
    """The value at `path` ($ = data, $$ = the context object); PathError when absent."""
    value = _lookup(data, path, context)
    if value is _MISSING:
        raise PathError(f"path {path!r} matches nothing in the input")
    return value


def has_path(data: Any, path: str, context: Any = None) -> bool:
    return _lookup(data, path, context) is not _MISSING


def _lookup(data: Any, path: str, context: Any) -> Any:
    if path.startswith("$$"):
        cur, rest = context, path[2:]
    else:
        cur, rest = data, path[1:]
    for tok in _tokens(rest):
        if isinstance(tok, int):
            if not isinstance(cur, list) or tok >= len(cur):
                return _MISSING
            cur = cur[tok]
        else:
            if not isinstance(cur, Mapping) or tok not in cur:
                return _MISSING
            cur = cur[tok]
    return cur


def set_path(data: Any, path: str, value: Any) -> Any:
    """A copy of `data` with `value` at `path` (ResultPath); intermediate objects are made."""
    toks = _tokens(path[1:])
    if not toks:
        return value
    root = copy.deepcopy(data) if isinstance(data, (dict, list)) else {}
    cur = root
    for i, tok in enumerate(toks):
        last = i == len(toks) - 1
        if isinstance(tok, int):
            if not isinstance(cur, list) or tok >= len(cur):
                raise PathError(f"ResultPath {path!r}: index {tok} is not in the input")
            if last:
                cur[tok] = value
            else:
                cur = cur[tok]
        else:
            if not isinstance(cur, dict):
                raise PathError(f"ResultPath {path!r}: {tok!r} is not inside an object")
            if last:
                cur[tok] = value
            else:
                if not isinstance(cur.get(tok), (dict, list)):
                    cur[tok] = {}
                cur = cur[tok]
    return root


def render(template: Any, data: Any, context: Any) -> Any:
    """Parameters/ResultSelector: copy the template, resolving ``"key.$"`` paths."""
    if isinstance(template, Mapping):
        out: dict[str, Any] = {}
        for k, v in template.items():
            if isinstance(k, str) and k.endswith(".$") and isinstance(v, str):
                out[k[:-2]] = copy.deepcopy(get_path(data, v, context))
            else:
                out[k] = render(v, data, context)
        return out
    if isinstance(template, list):
        return [render(v, data, context) for v in template]
    return copy.deepcopy(template)


def apply_input(state: State, raw_input: Any, context: Any) -> Any:
    """InputPath then Parameters: the effective input of a state."""
    path = state.get("InputPath", "$")
    effective = {} if path is None else get_path(raw_input, path, context)
    if "Parameters" in state.raw:
        effective = render(state.raw["Parameters"], effective, context)
    return effective


def apply_output(state: State, raw_input: Any, result: Any, context: Any,
                 result_path: Any = _MISSING) -> Any:
    """ResultSelector, ResultPath and OutputPath: a state's output."""
    if "ResultSelector" in state.raw and result_path is _MISSING:
        result = render(state.raw["ResultSelector"], result, context)
    rp = state.get("ResultPath", "$") if result_path is _MISSING else result_path
    merged = raw_input if rp is None else set_path(raw_input, rp, result)
    op = state.get("OutputPath", "$")
    return {} if op is None else get_path(merged, op, context)


# ====================================================================== choice
def choose(state: State, data: Any, context: Any) -> str | None:
    for rule in state.get("Choices") or []:
        if evaluate(rule, data, context):
            return str(rule["Next"])
    default = state.get("Default")
    return str(default) if default is not None else None


def evaluate(rule: Mapping[str, Any], data: Any, context: Any) -> bool:
    if "And" in rule:
        return all(evaluate(r, data, context) for r in rule["And"])
    if "Or" in rule:
        return any(evaluate(r, data, context) for r in rule["Or"])
    if "Not" in rule:
        return not evaluate(rule["Not"], data, context)
    var = rule["Variable"]
    present = has_path(data, var, context)
    op = next(k for k in rule if k in _COMPARISONS or k in _PATH_COMPARISONS)
    expected = rule[op]
    if op == "IsPresent":
        return present == expected
    if not present:
        return False  # a comparison on an absent field is false (Step Functions: an error)
    value = get_path(data, var, context)
    if op == "IsNull":
        return (value is None) == expected
    if op == "IsString":
        return isinstance(value, str) == expected
    if op == "IsBoolean":
        return isinstance(value, bool) == expected
    if op == "IsNumeric":
        return (isinstance(value, (int, float)) and not isinstance(value, bool)) == expected
    if op in _PATH_COMPARISONS:
        if not has_path(data, expected, context):
            return False
        expected = get_path(data, expected, context)
        op = op[: -len("Path")]
    if op.startswith("String"):
        if not isinstance(value, str) or not isinstance(expected, str):
            return False
        if op == "StringMatches":
            return fnmatch.fnmatchcase(value, expected)
        return _compare(op[len("String"):], value, expected)
    if op.startswith("Numeric"):
        if not _is_number(value) or not _is_number(expected):
            return False
        return _compare(op[len("Numeric"):], value, expected)
    if op == "BooleanEquals":
        return isinstance(value, bool) and value == expected
    return False


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _compare(how: str, a: Any, b: Any) -> bool:
    return {
        "Equals": a == b, "LessThan": a < b, "GreaterThan": a > b,
        "LessThanEquals": a <= b, "GreaterThanEquals": a >= b,
    }[how]


# ====================================================================== errors
def error_matches(names: tuple[str, ...], error: str) -> bool:
    """ErrorEquals semantics: States.ALL matches anything, States.TaskFailed any task error
    except a timeout, otherwise the exact name."""
    for n in names:
        if n == "States.ALL" or n == error:
            return True
        if n == "States.TaskFailed" and error != "States.Timeout":
            return True
    return False
