"""A catalogue of deliberately broken monitors and stores (issue 7, §4).

Each mutation patches a trusted class *in the test process* (the store, the monitor, the
invoker and the stream engine run there; the confined children only talk to them), for the
duration of a `with` block. The property suite must catch every one:
tests/ni/test_mutations.py checks that it does.

Some mutations are confidentiality bugs, caught by the noninterference property; others break
the store's semantics without leaking (the observer never sees the facets involved), and are
caught by the differential test against the reference interpreter. `expected` says which.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any
from unittest import mock

from ni.lang import LABELS
from trapeze.errors import FlowError
from trapeze.monitor.monitor import Monitor
from trapeze.runtime.engine_store import Lane, StoredRecord
from trapeze.runtime.invoker import Invoker
from trapeze.runtime.streams import StreamEngine
from trapeze.runtime.workflows import WorkflowEngine
from trapeze.store.base import MISSING
from trapeze.store.sqlite import SqliteFacetedStore
from trapeze.store.values import encode_value

_get = SqliteFacetedStore.get
_facets = SqliteFacetedStore.facets
_scan = SqliteFacetedStore.scan
_delete = SqliteFacetedStore.delete
_put = SqliteFacetedStore.put
_put_seq = SqliteFacetedStore.put_seq
_raise_label = Monitor.raise_label
_check_output = Monitor.check_output
_reply = Invoker._reply
_target_label = Monitor._target_label
_batch = StreamEngine._batch
_wf_start = WorkflowEngine.start
_wf_list = WorkflowEngine.list
_wf_view = WorkflowEngine._view

Patches = dict[tuple[type, str], Callable[..., Any]]


# -------------------------------------------------------------------------------- store
def _read_ignores_labels() -> Patches:
    def get(self: SqliteFacetedStore, table: str, key: str, *, label: str) -> Any:
        return _get(self, table, key, label=self.lattice.top)

    def facets(self: SqliteFacetedStore, table: str, key: str, *, label: str) -> Any:
        return _facets(self, table, key, label=self.lattice.top)

    def scan(self: SqliteFacetedStore, table: str, *, label: str, **kw: Any) -> Any:
        return _scan(self, table, label=self.lattice.top, **kw)

    return {(SqliteFacetedStore, "get"): get, (SqliteFacetedStore, "facets"): facets,
            (SqliteFacetedStore, "scan"): scan}


def _write_keeps_higher() -> Patches:
    # Implemented on top of the real write (the store's layout is its own business): note the
    # facets strictly above the writer's label, write, then put them back with their old seqs,
    # lowest label first so that putting one back never removes another.
    def height(store: SqliteFacetedStore, lab: str) -> int:
        return sum(1 for other in LABELS if store.lattice.flows(other, lab))

    def keep_higher(store: SqliteFacetedStore, table: str, key: str, label: str,
                    write: Callable[[], Any]) -> Any:
        above = [f for f in store.raw_facets(table, key)
                 if f[1] != label and store.lattice.flows(label, f[1])]
        result = write()
        conn = store._conns.get()
        for seq, lab, value, tomb in sorted(above, key=lambda f: height(store, f[1])):
            lid = conn.execute("SELECT id FROM facet_labels WHERE label = ?", (lab,)).fetchone()[0]
            conn.execute("INSERT INTO facets (tbl, key, seq, lid, value) VALUES (?, ?, ?, ?, ?)",
                         (table, key, seq, lid, None if tomb else encode_value(value)))
        return result

    def put(self: SqliteFacetedStore, table: str, key: str, value: Any, *, label: str,
            expect: object = MISSING) -> bool:
        if expect is not MISSING:  # the store's put goes through put_seq, patched below
            return _put(self, table, key, value, label=label, expect=expect)
        return bool(keep_higher(self, table, key, label,
                                lambda: _put(self, table, key, value, label=label, expect=expect)))

    def put_seq(self: SqliteFacetedStore, table: str, key: str, value: Any, *, label: str,
                **kw: Any) -> int | None:
        return keep_higher(self, table, key, label,  # type: ignore[no-any-return]
                           lambda: _put_seq(self, table, key, value, label=label, **kw))

    return {(SqliteFacetedStore, "put"): put, (SqliteFacetedStore, "put_seq"): put_seq}


def _get_highest_label() -> Patches:
    def get(self: SqliteFacetedStore, table: str, key: str, *, label: str) -> Any:
        facets = self.raw_facets(table, key)  # (seq, label, value, is_tombstone), newest first
        if not facets:
            return None

        def height(lab: str) -> int:
            return sum(1 for other in LABELS if self.lattice.flows(other, lab))

        best = max(facets, key=lambda f: (height(f[1]), f[0]))
        return None if best[3] else best[2]

    return {(SqliteFacetedStore, "get"): get}


def _delete_removes_lower() -> Patches:
    def delete(self: SqliteFacetedStore, table: str, key: str, *, label: str) -> None:
        self._conns.get().execute("DELETE FROM facets WHERE tbl = ? AND key = ?", (table, key))
        _delete(self, table, key, label=label)

    return {(SqliteFacetedStore, "delete"): delete}


# ------------------------------------------------------------------------------ monitor
def _raise_lowers() -> Patches:
    def raise_label(self: Monitor, inv: Any, new: str) -> str:
        new = self.check_label(new)
        with inv.lock:
            if new == inv.label:
                return new
            inv.history.append(inv.label)
            inv.label = new  # no `current ⊑ new` check
            fire = not inv.withheld and not self.lattice.flows(new, inv.response_bound)
            inv.withheld = inv.withheld or fire
        if fire and inv.on_withheld is not None:
            inv.on_withheld(inv)
        return new

    return {(Monitor, "raise_label"): raise_label}


def _no_early_withheld(self: Monitor, inv: Any, new: str) -> str:
    hook, inv.on_withheld = inv.on_withheld, None
    try:
        return _raise_label(self, inv, new)
    finally:
        inv.on_withheld = hook


def _response_after_raise() -> Patches:
    def reply(self: Invoker, inv: Any, outcome: Any) -> Any:
        bound, inv.response_bound = inv.response_bound, inv.label  # "it may go out"
        try:
            return _reply(self, inv, outcome)
        finally:
            inv.response_bound = bound

    return {(Monitor, "raise_label"): _no_early_withheld, (Invoker, "_reply"): reply}


def _refused_text_leaks() -> Patches:
    def reply(self: Invoker, inv: Any, outcome: Any) -> Any:
        result = _reply(self, inv, outcome)
        if result.status != "withheld":
            return result
        first = (outcome.error or "").split("\n", 1)[0]
        return dataclasses.replace(
            result, error=f"{result.error} (refused: {outcome.status} {outcome.value!r} {first})")

    def check_output(self: Monitor, inv: Any, channel: Any, payload: Any) -> Any:
        try:
            return _check_output(self, inv, channel, payload)
        except FlowError as e:
            raise FlowError(f"{e}: {payload!r}") from None

    return {(Monitor, "raise_label"): _no_early_withheld, (Invoker, "_reply"): reply,
            (Monitor, "check_output"): check_output}


def _bound_check_skipped() -> Patches:
    def check_output(self: Monitor, inv: Any, channel: Any, payload: Any) -> Any:
        return payload

    return {(Monitor, "check_output"): check_output}


def _async_lower_label() -> Patches:
    def target_label(self: Monitor, inv: Any, args: Any) -> str:
        if args.get("label") is None:  # "the current label", taken as the one it started at
            return inv.history[0] if inv.history else inv.label
        return _target_label(self, inv, args)

    return {(Monitor, "_target_label"): target_label}


# ------------------------------------------------------------------------------ streams
def _stream_batch_mixes_labels() -> Patches:
    # The batch query "forgets" the label: a lane's batch takes every record of its partition
    # after the lane's checkpoint, up to its own newest one, whatever their labels, and the
    # consumer still runs at the lane's label. A low lane's batch then carries the high
    # records put before its own (the lowest label of the batch is the one it runs at).
    def batch(self: StreamEngine, spec: Any, lane: Lane, lanes: list[Lane]) -> list[StoredRecord]:
        own = _batch(self, spec, lane, lanes)
        if not own:
            return own
        mixed: list[StoredRecord] = []
        for other in lanes:
            if other.partition == lane.partition:
                mixed += self.db.lane_records(lane.stream, other.partition, other.label,
                                              lane.last_id, own[-1].id + 1, spec.batch_size)
        return sorted(mixed, key=lambda r: r.id)[:spec.batch_size]

    return {(StreamEngine, "_batch"): batch}


# ---------------------------------------------------------------------------- workflows
def _workflow_name_clash_any_label() -> Patches:
    def start(self: WorkflowEngine, workflow: str, name: Any, input: Any, label: str,
              **kw: Any) -> Any:
        kw["caller_label"] = self.lattice.top  # a clash with an execution at any label
        return _wf_start(self, workflow, name, input, label, **kw)

    return {(WorkflowEngine, "start"): start}


def _workflow_list_ignores_labels() -> Patches:
    def list_(self: WorkflowEngine, label: str, workflow: str | None = None) -> Any:
        return _wf_list(self, self.lattice.top, workflow)

    return {(WorkflowEngine, "list"): list_}


def _workflow_outcome_ignores_label() -> Patches:
    def view(self: WorkflowEngine, row: dict[str, Any], viewer: str) -> Any:
        # Whoever may list an execution sees how it ended, whatever label it ended at.
        return _wf_view(self, row, self.lattice.top)

    return {(WorkflowEngine, "_view"): view}


# ----------------------------------------------------------------------------- catalogue
@dataclass(frozen=True)
class Mutation:
    name: str
    description: str
    patches: Callable[[], Patches]
    expected: str  # "noninterference" (a leak) or "differential" (wrong, but leaks nothing)

    @contextmanager
    def active(self) -> Iterator[None]:
        with ExitStack() as stack:
            for (cls, attr), fn in self.patches().items():
                stack.enter_context(mock.patch.object(cls, attr, fn))
            yield


CATALOGUE = (
    Mutation("read_ignores_labels", "get/facets/scan read at top, whatever the caller's label",
             _read_ignores_labels, "noninterference"),
    Mutation("write_keeps_higher", "put does not remove the facets above the writer's label",
             _write_keeps_higher, "differential"),
    Mutation("get_highest_label", "get returns the highest-label facet, not the newest visible",
             _get_highest_label, "noninterference"),
    Mutation("delete_removes_lower", "delete removes every facet, also those below the deleter",
             _delete_removes_lower, "noninterference"),
    Mutation("raise_lowers", "raise_label accepts any label, also a lower one",
             _raise_lowers, "noninterference"),
    Mutation("response_after_raise", "no withheld reply: the response goes out after a raise",
             _response_after_raise, "noninterference"),
    Mutation("refused_text_leaks", "the refused output travels in the error text (withheld "
             "reply, FlowError)", _refused_text_leaks, "noninterference"),
    Mutation("bound_check_skipped", "channel outputs are never checked against the bound",
             _bound_check_skipped, "noninterference"),
    Mutation("async_lower_label", "async invoke runs at the label the caller started at",
             _async_lower_label, "noninterference"),
    Mutation("stream_batch_mixes_labels", "a stream batch takes the partition's records of "
             "every label and runs at its lane's (the lowest) label", _stream_batch_mixes_labels,
             "noninterference"),
    Mutation("workflow_name_clash_any_label", "starting a named execution fails when an "
             "execution of that name exists at any label, not only at one the starter sees",
             _workflow_name_clash_any_label, "noninterference"),
    Mutation("workflow_list_ignores_labels", "the execution listing shows every execution, "
             "whatever the viewer's label", _workflow_list_ignores_labels, "noninterference"),
    Mutation("workflow_outcome_ignores_label", "an execution's status and output are shown to "
             "every viewer who may list it, also when its label rose above theirs",
             _workflow_outcome_ignores_label, "noninterference"),
)
