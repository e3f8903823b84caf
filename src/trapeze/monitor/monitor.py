"""The reference monitor: every guest request goes through `Monitor.handle` (TCB).

The sandbox has already checked the frame's structure (an op name it knows, a dict of
arguments). Everything else in `args` is attacker-controlled and is validated here. Each
operation runs at the invocation's *current* label, which only the monitor can change.

Rules (DESIGN §4–§6):
* store calls run at the current label (the store implements the faceted semantics);
* `label.raise` is allowed iff current ⊑ new; above the response bound it triggers the
  invocation's withheld reply at that moment;
* an output to a channel is allowed iff current ⊑ bound, or a declassifier declared for that
  channel applies (current ⊑ max_label and its target bound ⊑ the channel's bound); a refusal
  raises `FlowError` (decided on static labels only) and is audited;
* invocations, stream records and workflow starts carry the current label (or a higher one
  the caller names) in the runtime's envelope; a label inside a payload means nothing.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from trapeze.errors import ChannelError, FlowError, InvalidArgument, NotFound
from trapeze.labels import Lattice, UnknownLabelError
from trapeze.monitor.audit import AuditSink
from trapeze.monitor.invocation import Invocation

log = logging.getLogger("trapeze.monitor")

# Guest tables: names starting with "_" are reserved for the platform's own tables.
_TABLE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
_MISSING = object()


class Store(Protocol):
    def get(self, table: str, key: str, *, label: str) -> Any: ...
    def put(self, table: str, key: str, value: Any, *, label: str, expect: Any = ...) -> bool: ...
    def delete(self, table: str, key: str, *, label: str) -> None: ...
    def facets(self, table: str, key: str, *, label: str) -> list[tuple[Any, str]]: ...
    def scan(
        self, table: str, *, label: str, prefix: str = "", start_after: str | None = None,
        limit: int = 100,
    ) -> list[tuple[str, Any]]: ...


class Channel(Protocol):
    """An external output with a security bound (email, HTTP egress, ...)."""

    name: str
    kind: str
    bound: str

    def send(self, message: Mapping[str, Any], *, within: float | None = None) -> Any: ...


class HttpChannel(Channel, Protocol):
    def allows_url(self, url: str) -> bool: ...


@dataclass(frozen=True)
class Declassifier:
    """A trusted callable, named in the manifest, that may lower what leaves on one channel."""

    name: str
    channel: str  # a channel name, or "response"
    max_label: str  # usable when current ⊑ max_label
    bound: str  # the target bound it lets the output reach
    transform: Callable[[Any, Mapping[str, Any]], Any]


class Dispatcher(Protocol):
    """The runtime side of invocations, streams and workflows (implemented in runtime/)."""

    def invoke_sync(self, parent: Invocation, function: str, event: Any) -> Any: ...
    def invoke_async(self, parent: Invocation, function: str, event: Any, label: str) -> str: ...
    def stream_put(
        self, parent: Invocation, stream: str, record: Any, partition_key: str | None, label: str
    ) -> Any: ...
    def workflow_start(
        self, parent: Invocation, workflow: str, name: str | None, event: Any, label: str
    ) -> Any: ...
    def task_complete(self, parent: Invocation, token: str, output: Any, error: Any) -> Any: ...


def _send_by_deadline(inv: Invocation, channel: Channel, payload: Any) -> Any:
    """`channel.send(payload)`, given up at the invocation's deadline (ChannelError).

    The sandbox enforces the deadline between the guest's calls, not during one the monitor
    serves, and a channel's own timeout bounds each socket operation, not the exchange. A
    callee covered by a response declassifier that entered a slow exchange just before its
    deadline (chosen on data above its caller) so outlived its caller's deadline, and the
    caller timed out instead of getting what the declassifier decides (review, session 7:
    tests/platform/test_review_declassifier_paths.py). The send runs in a thread of its own
    so that it can be left behind; one at most per invocation is (the call that reaches the
    deadline is its last), and it is told the time left (`within`), which the channel
    bounds the whole exchange by (HTTP) or each socket operation (SMTP), so that a server
    cannot keep it running for long (tests/attacks/test_review_fixes_s7b.py).
    """
    left = inv.remaining_s()
    box: dict[str, Any] = {}
    done = threading.Event()

    def send() -> None:
        try:
            box["value"] = channel.send(payload, within=left)
        except BaseException as e:  # re-raised in the invocation's thread
            box["error"] = e
        finally:
            done.set()

    threading.Thread(target=send, name=f"trapeze-send-{channel.name}", daemon=True).start()
    if not done.wait(left):
        raise ChannelError(
            f"channel {channel.name!r} did not answer before the invocation's deadline")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _str(args: Mapping[str, Any], name: str, *, optional: bool = False) -> str | None:
    value = args.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise InvalidArgument(f"argument {name!r} must be a string")
    return value


def _table(args: Mapping[str, Any]) -> str:
    table = _str(args, "table")
    assert table is not None
    if not _TABLE_RE.fullmatch(table):
        raise InvalidArgument(
            f"invalid table name {table!r}: use 1-128 letters, digits, '_', '.', ':', '-', "
            f"not starting with '_' (reserved)"
        )
    return table


def _key(args: Mapping[str, Any]) -> str:
    key = _str(args, "key")
    assert key is not None
    return key


def _name(args: Mapping[str, Any], field: str) -> str:
    value = _str(args, field)
    assert value is not None
    if not _NAME_RE.fullmatch(value):
        raise InvalidArgument(f"invalid {field} {value!r}")
    return value


class Monitor:
    """Handles guest calls for every invocation of one running app."""

    def __init__(
        self,
        lattice: Lattice,
        store: Store,
        audit: AuditSink,
        *,
        channels: Mapping[str, Channel] | None = None,
        declassifiers: Mapping[str, Declassifier] | None = None,
        dispatcher: Dispatcher | None = None,
    ) -> None:
        self.lattice = lattice
        self.store = store
        self.audit = audit
        self.channels = dict(channels or {})
        self.declassifiers = dict(declassifiers or {})
        self.dispatcher = dispatcher
        self._by_channel: dict[str, list[Declassifier]] = {}
        for d in self.declassifiers.values():
            self._by_channel.setdefault(d.channel, []).append(d)
        self._declassifiable: dict[str, bool] = {}  # response_declassifiable, per label
        # One table lookup per op on the hot path instead of a chain of ifs.
        self._ops: dict[str, Callable[[Invocation, Mapping[str, Any]], Any]] = {
            "kv.get": self._kv_get,
            "kv.put": self._kv_put,
            "kv.delete": self._kv_delete,
            "kv.facets": self._kv_facets,
            "kv.scan": self._kv_scan,
            "label.current": lambda inv, args: inv.label,
            "label.raise": self._label_raise,
            "channel.send": self._channel_send,
            "http.request": self._http_request,
            "functions.invoke": self._invoke,
            "functions.invoke_async": self._invoke_async,
            "streams.put": self._stream_put,
            "workflows.start": self._workflow_start,
            "tasks.complete": self._task_complete,
        }

    # ------------------------------------------------------------------ entry point
    def handle(self, inv: Invocation, op: str, args: Mapping[str, Any]) -> Any:
        handler = self._ops.get(op)
        if handler is None:
            raise InvalidArgument(f"unknown operation {op!r}")
        if not isinstance(args, Mapping):
            raise InvalidArgument("arguments must be a map")
        return handler(inv, args)

    # ------------------------------------------------------------------ store
    def _kv_get(self, inv: Invocation, args: Mapping[str, Any]) -> Any:
        return self.store.get(_table(args), _key(args), label=inv.label)

    def _kv_put(self, inv: Invocation, args: Mapping[str, Any]) -> bool:
        table, key = _table(args), _key(args)
        if "value" not in args:
            raise InvalidArgument("kv.put needs a value")
        if "expect" in args:
            return self.store.put(table, key, args["value"], label=inv.label, expect=args["expect"])
        return self.store.put(table, key, args["value"], label=inv.label)

    def _kv_delete(self, inv: Invocation, args: Mapping[str, Any]) -> None:
        self.store.delete(_table(args), _key(args), label=inv.label)

    def _kv_facets(self, inv: Invocation, args: Mapping[str, Any]) -> list[list[Any]]:
        facets = self.store.facets(_table(args), _key(args), label=inv.label)
        return [[value, label] for value, label in facets]

    def _kv_scan(self, inv: Invocation, args: Mapping[str, Any]) -> list[list[Any]]:
        prefix = _str(args, "prefix", optional=True) or ""
        start_after = _str(args, "start_after", optional=True)
        limit = args.get("limit", 100)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 1000:
            raise InvalidArgument("limit must be an integer between 1 and 1000")
        rows = self.store.scan(
            _table(args), label=inv.label, prefix=prefix, start_after=start_after, limit=limit
        )
        return [[k, v] for k, v in rows]

    # ------------------------------------------------------------------ labels
    def check_label(self, label: Any) -> str:
        if not isinstance(label, str):
            raise InvalidArgument("a label must be a string")
        try:
            return self.lattice.check(label)
        except UnknownLabelError as e:
            raise InvalidArgument(str(e)) from None

    def raise_label(self, inv: Invocation, new: str) -> str:
        new = self.check_label(new)
        with inv.lock:
            old = inv.label
            if not self.lattice.flows(old, new):
                self.audit.record("refused", inv, {"op": "label.raise", "to": new})
                raise FlowError(f"cannot lower the label from {old!r} to {new!r}")
            if new == old:
                return new
            inv.history.append(old)
            inv.label = new
            self.audit.record("raise", inv, {"from": old, "to": new})
            fire = False
            if not inv.withheld and not self.lattice.flows(new, inv.response_bound):
                d = inv.reply_declassifier
                if d is None:
                    d = inv.reply_declassifier = self.response_declassifier(inv)
                    fire = d is None
                elif inv.escaped_at is None and not self.lattice.flows(new, d.max_label):
                    # Beyond the declassifier's reach. Withholding now would tell the invoker
                    # that this raise happened, a decision made after reading data above the
                    # bound: the reply waits for the end, and the declassifier decides it
                    # knowing only that the invocation escaped, at the label it did so from.
                    inv.escaped_at = old
                    inv.escaped_history = tuple(inv.history[:-1])
            if fire:
                inv.withheld = True
        if fire and inv.on_withheld is not None:
            inv.on_withheld(inv)
        return new

    def _label_raise(self, inv: Invocation, args: Mapping[str, Any]) -> str:
        return self.raise_label(inv, args.get("label"))  # type: ignore[arg-type]

    def response_declassifiable(self, label: str) -> bool:
        """Whether a response declassifier may release the reply of an invocation that
        answers to `label` after raising above it (bound below `label`, max_label above).
        Depends only on the manifest and `label`; cached per label."""
        known = self._declassifiable.get(label)
        if known is None:
            known = self._declassifiable[label] = any(
                self.lattice.flows(d.bound, label) and self.lattice.flows(label, d.max_label)
                for d in self._by_channel.get("response", ()))
        return known

    def response_declassifier(self, inv: Invocation) -> Declassifier | None:
        return self._declassifier_for(inv, "response", inv.response_bound)

    def _declassifier_for(self, inv: Invocation, channel: str, bound: str) -> Declassifier | None:
        for d in self._by_channel.get(channel, ()):
            if self.lattice.flows(inv.label, d.max_label) and self.lattice.flows(d.bound, bound):
                return d
        return None

    def declassify(self, inv: Invocation, d: Declassifier, channel: str, payload: Any, *,
                   status: str = "ok", label: str | None = None) -> Any:
        """Run declassifier `d` on `payload`. `status` (responses only): the invocation's
        outcome, "ok", "error", "timeout", "crash" or "withheld" (the payload is None unless
        "ok"); `label`: the label the payload is data of, if not the current one."""
        info = {
            "function": inv.function,
            "principal": inv.principal,
            "request_id": inv.request_id,
            "label": label or inv.label,
            # For an escape, the history as it was then: later raises happened beyond the
            # declassifier's reach, and which ones may depend on data from there.
            "history": list(inv.escaped_history if status == "withheld" else inv.history),
            "channel": channel,
            "status": status,
            # A trusted read at the declassifier's max_label, so that a declassifier can
            # release what the store holds (a product, an assignment) instead of trusting
            # what the function, which may be compromised, says the store holds.
            "read": lambda table, key: self.store.get(table, key, label=d.max_label),
            # The same, facet by facet: [(value, label)], newest first. At max_label a read
            # sees every label below it; a policy that must know whose data it releases (the
            # card of this client, not one written under its key by someone else) picks the
            # facet by its label.
            "facets": lambda table, key: self.store.facets(table, key, label=d.max_label),
        }
        try:
            out = d.transform(payload, info)
        except Exception as e:  # the declassifier is trusted code, but may reject an output
            # The refusal itself is the declassifier's declared decision, which the guest
            # sees as well; why it refused was computed from data up to its max_label, and
            # is recorded there only (review, session 7: at the invocation's label, the
            # exception's class told a viewer there which way a top record was malformed).
            self.audit.record("refused", inv, {"channel": channel, "declassifier": d.name})
            self.audit.record("refused", inv, {"channel": channel, "declassifier": d.name,
                                               "reason": type(e).__name__},
                              label=d.max_label)
            raise FlowError(f"declassifier {d.name!r} refused the output to {channel!r}") from None
        self.audit.record("declassify", inv, {"channel": channel, "declassifier": d.name,
                                              "from": label or inv.label, "to": d.bound,
                                              "status": status})
        return out

    # ------------------------------------------------------------------ outputs
    def check_output(self, inv: Invocation, channel: Channel, payload: Any) -> Any:
        """Return the payload to send (possibly declassified) or raise FlowError."""
        if self.lattice.flows(inv.label, channel.bound):
            return payload
        d = self._declassifier_for(inv, channel.name, channel.bound)
        if d is not None:
            return self.declassify(inv, d, channel.name, payload)
        self.audit.record(
            "refused", inv, {"channel": channel.name, "label": inv.label, "bound": channel.bound}
        )
        raise FlowError(
            f"output to channel {channel.name!r} (bound {channel.bound!r}) refused at label "
            f"{inv.label!r}"
        )

    def _channel_send(self, inv: Invocation, args: Mapping[str, Any]) -> Any:
        name = _name(args, "channel")
        channel = self.channels.get(name)
        if channel is None or channel.kind == "http":
            raise NotFound(f"no message channel named {name!r} in the manifest")
        message = args.get("message")
        if not isinstance(message, Mapping):
            raise InvalidArgument("channel.send needs a message map")
        return _send_by_deadline(inv, channel, self.check_output(inv, channel, message))

    def _http_request(self, inv: Invocation, args: Mapping[str, Any]) -> Any:
        url = _str(args, "url")
        assert url is not None
        channel = next(
            (c for c in self.channels.values()
             if c.kind == "http" and c.allows_url(url)),  # type: ignore[attr-defined]
            None,
        )
        if channel is None:
            self.audit.record("refused", inv, {"op": "http.request", "reason": "no channel"})
            raise FlowError(f"no HTTP channel in the manifest allows {url!r}")
        request = {k: args.get(k) for k in ("method", "url", "headers", "body", "timeout")}
        return _send_by_deadline(inv, channel, self.check_output(inv, channel, request))

    # ------------------------------------------------------------------ invocations
    def _target_label(self, inv: Invocation, args: Mapping[str, Any]) -> str:
        requested = args.get("label")
        if requested is None:
            return inv.label
        label = self.check_label(requested)
        if not self.lattice.flows(inv.label, label):
            self.audit.record("refused", inv, {"op": "invoke", "label": label})
            raise FlowError(f"cannot start work at {label!r}: it is below the current label")
        return label

    def _need_dispatcher(self) -> Dispatcher:
        if self.dispatcher is None:
            raise NotFound("this runtime has no dispatcher for invocations")
        return self.dispatcher

    def _invoke(self, inv: Invocation, args: Mapping[str, Any]) -> Any:
        return self._need_dispatcher().invoke_sync(inv, _name(args, "function"), args.get("event"))

    # Each checks the requested label before anything else happens.
    def _invoke_async(self, inv: Invocation, args: Mapping[str, Any]) -> str:
        label = self._target_label(inv, args)
        return self._need_dispatcher().invoke_async(
            inv, _name(args, "function"), args.get("event"), label
        )

    def _stream_put(self, inv: Invocation, args: Mapping[str, Any]) -> Any:
        label = self._target_label(inv, args)
        partition_key = _str(args, "partition_key", optional=True)
        return self._need_dispatcher().stream_put(
            inv, _name(args, "stream"), args.get("record"), partition_key, label
        )

    def _workflow_start(self, inv: Invocation, args: Mapping[str, Any]) -> Any:
        label = self._target_label(inv, args)
        return self._need_dispatcher().workflow_start(
            inv, _name(args, "workflow"), _str(args, "name", optional=True), args.get("input"),
            label,
        )

    def _task_complete(self, inv: Invocation, args: Mapping[str, Any]) -> Any:
        token = _str(args, "token")
        assert token is not None
        return self._need_dispatcher().task_complete(inv, token, args.get("output"),
                                                     args.get("error"))
