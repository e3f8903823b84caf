"""Durable, partitioned streams with labelled records (trusted; DESIGN §4, §9).

A record is stored with the label it was put at, in a column: the label travels out of band,
and a ``label``/``ifcLabel`` field inside a record is just data. Each consumer function gets
the records in batches, at-least-once, and a batch never mixes labels: the consumer runs at
the batch's label.

Delivery lanes and ordering. Records are ordered per partition key. Delivery state is kept per
lane = (consumer, partition, label), each with its own checkpoint, because a record must never
wait for one at a label that does not flow to its own: if a low record waited behind a high
one, whether (and when) the low consumer saw it would depend on how the high consumer fared.
So a record at ``l`` is delivered once every earlier record of its partition at a label
strictly below ``l`` is done (checkpointed or dead-lettered); records at the same label are
delivered in order; records at higher or incomparable labels do not hold it back. For a
partition written at one label this is plain per-partition order.

Sequence numbers. The visible ``sequenceNumber`` counts records of the same stream *and
label* (``"<n>/<label>"``), so the numbers a viewer sees never reveal how many records other
labels put in between. The global order is internal. A put at a label above the caller's
(allowed: DESIGN §4) answers ``"hidden/<label>"`` instead: the number counts the records of
that higher label, which the caller may not know.

Failures. A batch whose consumer fails *at the batch's label* is retried with exponential
backoff and dead-lettered after ``max_attempts``. A consumer that raised its label and then
failed has failed at the raised label: retrying it in the batch's lane would let the batch's
label observe that failure, so the lane moves on at once and the batch is retried detached at
the raised label (then dead-lettered there, visible only at that label). The batch is
dead-lettered at the raised label in the same transaction that moves the lane on, with the
attempts so far; each retry rewrites or (on success) removes those dead letters. So a
restart never loses it: an engine starting resumes the retries of every dead letter whose
attempts are below the stream's `max_attempts`.

A consumer the invoker *refuses* (the runtime is shutting down, or its queues are full) never
ran: that is not a failure of the batch, which is delivered again later without counting an
attempt. An engine-side error around a delivery (the invocation raised inside the engine, or
recording its outcome failed) counts as a failed attempt, at the label the invocation ended
at when that is known, else at ``top``, so that it is retried with back-off (or moves on)
instead of being redelivered in a tight loop.

Several engines (processes, machines) may deliver the same streams from one database: a lane
is delivered by whichever engine claims it (``EngineDB.claim``) for one batch at a time, the
claim is taken before the lane's checkpoint is read and released after the new checkpoint is
committed, so batches of a lane never overlap and follow each other in order. An engine
claims only as many lanes as it has idle delivery workers, leaving the rest to the others.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from trapeze.errors import InvalidArgument, LimitExceeded, NotFound
from trapeze.labels import Lattice
from trapeze.policy.specs import StreamSpec
from trapeze.runtime.engine_store import ClaimLost, EngineDB, Lane, StoredRecord, dumps, loads

log = logging.getLogger("trapeze.streams")
_SHUFFLE = secrets.SystemRandom()  # scheduling order: see _schedule

DEFAULT_PARTITION = "default"
MAX_PARTITION_KEY = 256
HIDDEN_SEQUENCE = "hidden"  # the number part of a put's reply at a label above the caller's


class StepResult(Protocol):
    """What an invocation returns to an engine (InvocationResult fits)."""

    status: str  # ok / error / withheld / timeout / refused
    value: Any
    error: str | None
    label: str | None  # the label the invocation ended at


# invoke(function, event, label) -> result. The engines are trusted and wait for every result,
# so the runtime must call with response_bound = top: nothing is withheld from them and the
# result carries the final label (see `invoker_adapter`).
Invoke = Callable[[str, Any, str], StepResult]


def invoker_adapter(invoker: Any, lattice: Lattice) -> Invoke:
    """An `Invoke` over the runtime's Invoker (bound = top, so the final label comes back)."""

    def invoke(function: str, event: Any, label: str) -> StepResult:
        return invoker.invoke(function, event, label=label,  # type: ignore[no-any-return]
                              response_bound=lattice.top)

    return invoke


class StreamError(InvalidArgument):
    """A put the stream refuses (message built from the caller's own arguments only)."""


def encode_record(record: Any, limit: int) -> str:
    """The record as canonical JSON, or a clear error when it is not JSON or too large."""
    try:
        text = dumps(record)
    except (TypeError, ValueError) as e:
        raise StreamError(f"a stream record must be a JSON value: {e}") from None
    size = len(text.encode())
    if size > limit:
        raise LimitExceeded(
            f"the record is {size} bytes encoded as JSON; this stream takes at most {limit}"
        )
    return text


class StreamEngine:
    def __init__(
        self,
        db: EngineDB,
        lattice: Lattice,
        streams: Mapping[str, StreamSpec],
        invoke: Invoke,
        *,
        workers: int = 4,
        poll_interval: float = 0.5,
        backoff_base: float = 0.05,
        backoff_max: float = 5.0,
    ) -> None:
        self.db = db
        self.lattice = lattice
        self.streams = dict(streams)
        self.invoke = invoke
        self.poll_interval = poll_interval
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._wake = threading.Condition()
        self._dirty = True
        self._stopping = False
        self._inflight: set[tuple[str, str, str, str]] = set()
        # Lanes held back in memory until a time: set only when even recording a failed
        # attempt failed (the database is unreachable), so that they are not redelivered
        # in a tight loop meanwhile.
        self._hold: dict[tuple[str, str, str, str], float] = {}
        self._detached = 0

    # ------------------------------------------------------------------ producers
    def spec(self, stream: str) -> StreamSpec:
        spec = self.streams.get(stream)
        if spec is None:
            known = ", ".join(sorted(self.streams)) or "none declared"
            raise NotFound(f"no stream named {stream!r} (streams: {known})")
        return spec

    def put(self, stream: str, record: Any, partition_key: str | None,
            label: str, *, caller_label: str | None = None) -> dict[str, Any]:
        """Append `record` at `label` (already checked by the caller: the monitor or the CLI).

        `caller_label` is the label the reply goes to (default `label`). When the record's
        label does not flow to it (the caller named a higher label), the reply's sequence
        is ``"hidden/<label>"``: the number counts the records put at that label, which
        the caller must not learn.
        """
        spec = self.spec(stream)
        label = self.lattice.check(label)
        if partition_key is None:
            partition_key = DEFAULT_PARTITION
        if not isinstance(partition_key, str) or not partition_key or \
                len(partition_key) > MAX_PARTITION_KEY or "\x00" in partition_key:
            raise StreamError(
                f"a partition key must be a non-empty string of at most {MAX_PARTITION_KEY}"
                " characters, without NUL"
            )
        hidden = caller_label is not None and \
            not self.lattice.flows(label, self.lattice.check(caller_label))
        text = encode_record(record, spec.max_record_bytes)
        _, n = self.db.append_record(stream, partition_key, label, text, time.time())
        self._poke()
        if hidden:
            return {"sequence": f"{HIDDEN_SEQUENCE}/{label}", "partition": partition_key}
        return {"sequence": _seq(n, label), "partition": partition_key}

    # ------------------------------------------------------------------ readers
    def tail(self, stream: str, label: str, limit: int = 100) -> list[dict[str, Any]]:
        """The newest `limit` records whose label flows to `label`, oldest first."""
        self.spec(stream)
        label = self.lattice.check(label)
        if type(limit) is not int or limit < 0:
            raise InvalidArgument("limit must be a non-negative int")
        rows = self.db.stream_rows(stream, True, limit, lambda lab: self.lattice.flows(lab, label))
        return [_record_out(r) | {"label": r.label} for r in reversed(rows)]

    def dead_letters(self, stream: str, label: str) -> list[dict[str, Any]]:
        self.spec(stream)
        label = self.lattice.check(label)
        out = []
        for consumer, part, dl_label, attempts, error, at, r_label, n, data in \
                self.db.dead_letter_rows(stream):
            if self.lattice.flows(dl_label, label):
                out.append({"consumer": consumer, "partitionKey": part, "label": dl_label,
                            "attempts": attempts, "error": error, "time": at,
                            "sequenceNumber": _seq(n, r_label), "data": loads(data)})
        return out

    # ------------------------------------------------------------------ delivery
    def start(self) -> StreamEngine:
        if self._thread is not None:
            return self
        self._stopping = False
        self._pool = ThreadPoolExecutor(max_workers=self._workers,
                                        thread_name_prefix="trapeze-stream")
        self._thread = threading.Thread(target=self._loop, name="trapeze-stream-sched",
                                        daemon=True)
        self._thread.start()
        try:
            # Before returning, so that idle() counts them from the start.
            self._resume_detached()
        except Exception:
            log.exception("could not resume the detached stream retries; they stay in the"
                          " dead letters")
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop scheduling; wait for batches in flight (an unfinished one is redelivered)."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def idle(self) -> bool:
        """True when every record has been delivered to every consumer or dead-lettered."""
        with self._wake:
            if self._inflight or self._detached:
                return False
        for name, spec in self.streams.items():
            for consumer in spec.consumers:
                if any(lane.newest > lane.last_id for lane in self.db.lanes(name, consumer)):
                    return False
        return True

    def wait_idle(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.idle():
                return True
            time.sleep(0.02)
        return self.idle()

    def _poke(self) -> None:
        with self._wake:
            self._dirty = True
            self._wake.notify_all()

    def _loop(self) -> None:
        while True:
            with self._wake:
                if self._stopping:
                    return
                if not self._dirty:
                    self._wake.wait(self.poll_interval)
                if self._stopping:
                    return
                self._dirty = False
            try:
                self._schedule()
            except Exception:  # a transient database error must not kill delivery
                log.exception("stream scheduling failed; retrying")
                time.sleep(self.poll_interval)

    def _schedule(self) -> None:
        now = time.time()
        candidates: list[tuple[StreamSpec, Lane]] = []
        for name, spec in self.streams.items():
            for consumer in spec.consumers:
                candidates.extend((spec, lane) for lane in self.db.lanes(name, consumer)
                                  if lane.newest > lane.last_id and lane.next_at <= now)
        if not candidates:
            return
        # Workers are scarce: each pass visits the lanes in a fresh random order, so that none
        # waits forever behind busier ones. Not in turn (a counter of passes over the lanes
        # of every label ordered two low lanes' deliveries by how many passes higher lanes
        # had caused), and not a random rotation either: rotating the table's order put a
        # low lane first less often the more high lanes sorted just before it (high code
        # picks its partitions, so where they sort). In a uniform shuffle two low lanes are
        # each first half the time, whatever else is waiting (review, session 6).
        _SHUFFLE.shuffle(candidates)
        for spec, lane in candidates:
            key = (lane.stream, lane.consumer, lane.partition, lane.label)
            with self._wake:
                if self._stopping or self._pool is None:
                    return
                if self._hold.get(key, 0.0) > now:
                    continue
                self._hold.pop(key, None)
                if len(self._inflight) >= self._workers:
                    return  # claim no lane we cannot start now: other engines may take it
                if key in self._inflight:
                    continue
                self._inflight.add(key)
            claimed = submitted = False
            try:
                claimed = self.db.claim(lane.claim)
                if not claimed:
                    continue  # another engine is delivering this lane
                # Re-read after claiming the lane: the snapshot above may predate a
                # delivery that just finished (here or in another engine), and its batch
                # must not be sent twice.
                fresh = self.db.lanes(lane.stream, lane.consumer)
                mine = next((x for x in fresh if (x.partition, x.label) ==
                             (lane.partition, lane.label)), None)
                if mine is None or mine.next_at > now:
                    continue
                batch = self._batch(spec, mine, fresh)
                with self._wake:
                    if batch and not self._stopping and self._pool is not None:
                        self._pool.submit(self._deliver, spec, mine, batch, key)
                        submitted = True
            finally:
                if not submitted:
                    if claimed:
                        self.db.release(lane.claim)
                    with self._wake:
                        self._inflight.discard(key)

    def _batch(self, spec: StreamSpec, lane: Lane, lanes: list[Lane]) -> list[StoredRecord]:
        # The lane may not pass the first pending record of any strictly lower lane of the
        # same partition (order towards lower labels); higher lanes never hold it back.
        bound = lane.newest + 1
        for other in lanes:
            if other.partition != lane.partition or other.label == lane.label:
                continue
            if other.newest <= other.last_id or not self.lattice.flows(other.label, lane.label):
                continue
            first = self.db.first_pending(lane.stream, other.partition, other.label,
                                          other.last_id)
            if first is not None:
                bound = min(bound, first)
        return self.db.lane_records(lane.stream, lane.partition, lane.label, lane.last_id,
                                    bound, spec.batch_size)

    def _event(self, stream: str, batch: list[StoredRecord]) -> dict[str, Any]:
        return {"Records": [_record_out(r) | {"eventSource": "trapeze:stream",
                                              "streamName": stream} for r in batch]}

    def _deliver(self, spec: StreamSpec, lane: Lane, batch: list[StoredRecord],
                 key: tuple[str, str, str, str]) -> None:
        try:
            self._deliver_once(spec, lane, batch)
        except ClaimLost:
            # Another engine owns the lane now and delivers from the last checkpoint.
            log.warning("stream %s: lost the lane of %s while delivering; left to its new"
                        " holder", lane.stream, lane.consumer)
        except Exception:
            # Not even the failed attempt could be recorded (the database is unreachable):
            # hold the lane back here for a while rather than redeliver it at once.
            log.exception("stream delivery to %s failed inside the engine; the lane waits"
                          " %.1fs", lane.consumer, self.backoff_max)
            with self._wake:
                self._hold[key] = time.time() + self.backoff_max
        finally:
            try:
                self.db.release(lane.claim)
            except Exception:
                log.exception("stream %s: could not release a lane claim", lane.stream)
            with self._wake:
                self._inflight.discard(key)
                self._dirty = True
                self._wake.notify_all()

    def _deliver_once(self, spec: StreamSpec, lane: Lane, batch: list[StoredRecord]) -> None:
        final: str | None = None  # the label the invocation ended at, once known
        try:
            result = self.invoke(lane.consumer, self._event(lane.stream, batch), lane.label)
            if result.status == "refused":
                # The consumer never ran (shutting down, or the invoker's queues are full):
                # no attempt is counted; the lane is delivered again after a pause, or by
                # the next engine when this one is stopping.
                if not self._stopping:
                    self.db.set_checkpoint(lane, lane.last_id, lane.attempts,
                                           time.time() + self._refused_delay())
                return
            final = result.label or lane.label
            if result.status == "ok":
                self.db.set_checkpoint(lane, batch[-1].id, 0, 0.0)
                return
            self._failed(spec, lane, batch, final, f"{result.status}: {result.error or ''}")
        except Exception as e:
            if isinstance(e, ClaimLost) or self.db.is_transient(e) or \
                    (final is None and self._stopping):
                raise  # nothing is recorded: the lane is delivered again later
            # Engine-side, yet possibly caused by what the consumer did (an outcome the
            # tables refused): a failed attempt at the label the invocation ended at, or
            # at top when that is unknown, so that the lane backs off or moves on.
            log.exception("stream %s: delivery to %s failed inside the engine; counted as"
                          " a failed attempt", lane.stream, lane.consumer)
            self._failed(spec, lane, batch, self.lattice.top if final is None else final,
                         f"Trapeze.Internal: the engine failed ({type(e).__name__})")

    def _refused_delay(self) -> float:
        return max(self.poll_interval, self.backoff_base)

    def _failed(self, spec: StreamSpec, lane: Lane, batch: list[StoredRecord], final: str,
                error: str) -> None:
        """Record a failed attempt to deliver `batch`, known at label `final`."""
        last = batch[-1].id
        error = error[:2000]
        if not self.lattice.flows(final, lane.label):
            # Failed above the batch's label: the lane must not learn it (see module doc).
            # No error on the checkpoint (the lane's label would see it); the dead letters
            # carry it at the raised label, durable before the lane moves on.
            self.db.set_checkpoint(lane, last, 0, 0.0,
                                   dead=[(r.id, final, error, 1) for r in batch])
            if spec.max_attempts > 1:
                self._detach_retries(spec, lane.stream, lane.consumer, lane.partition, batch,
                                     final, error, 1)
            return
        attempts = lane.attempts + 1
        if attempts >= spec.max_attempts:
            log.warning("stream %s: batch for %s dead-lettered after %d attempts",
                        lane.stream, lane.consumer, attempts)
            self.db.set_checkpoint(lane, last, 0, 0.0, error,
                                   dead=[(r.id, lane.label, error, attempts) for r in batch])
            return
        delay = min(self.backoff_base * 2 ** (attempts - 1), self.backoff_max)
        self.db.set_checkpoint(lane, lane.last_id, attempts, time.time() + delay, error)

    def _detach_retries(self, spec: StreamSpec, stream: str, consumer: str, partition: str,
                        batch: list[StoredRecord], label: str, error: str,
                        attempts: int) -> None:
        """Retry `batch`, dead-lettered at `label` after `attempts` attempts, in a thread of
        its own (its backoff must hold up no lane), rewriting its dead letters as it goes."""
        claim = f"stream-retry:{stream}:{consumer}:{partition}:{batch[0].id}"
        if not self.db.claim(claim):
            return  # another engine (or an earlier resume here) retries this batch

        def run() -> None:
            nonlocal label, error
            ids = [r.id for r in batch]
            try:
                attempt = attempts + 1
                while attempt <= spec.max_attempts:
                    time.sleep(min(self.backoff_base * 2 ** (attempt - 2), self.backoff_max))
                    if self._stopping:
                        return  # the dead letters stay; the next start resumes them
                    result = self.invoke(consumer, self._event(stream, batch), label)
                    if result.status == "refused":
                        continue  # never ran: not an attempt (stopping: checked above)
                    if result.status == "ok":
                        self.db.retry_dead_letters(stream, consumer, partition, label, ids)
                        return
                    # Labels only go up: a retry that raised further failed at the join.
                    joined = self.lattice.join(label, result.label or label)
                    error = f"{result.status}: {result.error or ''}"[:2000]
                    self.db.retry_dead_letters(stream, consumer, partition, label, ids,
                                               attempts=attempt, new_label=joined, error=error)
                    label = joined
                    attempt += 1
            except Exception:
                log.exception("detached stream retry failed inside the engine; its dead"
                              " letters stay and the next start resumes it")
            finally:
                try:
                    self.db.release(claim)
                finally:
                    with self._wake:
                        self._detached -= 1

        with self._wake:
            self._detached += 1
        threading.Thread(target=run, name="trapeze-stream-detached", daemon=True).start()

    def _resume_detached(self) -> None:
        """Start again the detached retries an earlier engine left unfinished (stopped or
        crashed): dead letters with attempts below the stream's max."""
        for name, spec in self.streams.items():
            groups: dict[tuple[Any, ...], list[int]] = {}
            for consumer, partition, label, attempts, error, at, rid, r_label in \
                    self.db.retrying_dead_letter_rows(name, spec.max_attempts):
                if consumer in spec.consumers:
                    # A batch's dead letters are written together: same time, same attempts.
                    key = (consumer, partition, label, attempts, error, at, r_label)
                    groups.setdefault(key, []).append(rid)
            for (consumer, partition, label, attempts, error, _at, r_label), ids in \
                    groups.items():
                wanted = set(ids)
                batch = [r for r in self.db.lane_records(name, partition, r_label,
                                                         min(ids) - 1, max(ids) + 1, len(ids))
                         if r.id in wanted]
                if len(batch) == len(ids):  # records are never deleted; checked anyway
                    self._detach_retries(spec, name, consumer, partition, batch, label,
                                         error or "", attempts)


def _seq(n: int, label: str) -> str:
    return f"{n:012d}/{label}"


def _record_out(r: StoredRecord) -> dict[str, Any]:
    return {
        "data": loads(r.data),
        "partitionKey": r.partition,
        "sequenceNumber": _seq(r.lane_seq, r.label),
        "approximateArrivalTimestamp": r.arrived,
        "eventID": f"{r.partition}:{_seq(r.lane_seq, r.label)}",
    }
