"""The replay harness: history through the very same ``build_flow``, in event time.

Events are encoded to their wire bytes and fed to the dataflow in event-time
order; the watermark moves with event times only, and the run ends with a final
watermark at the end of the ``until`` day, at which every customer with an
order is scored by the model as it stood then — having seen nothing later.

>>> from datetime import date
>>> end_of_day_ts(date(1997, 9, 30))
875663999.999999
"""

from __future__ import annotations

import csv
import gc
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main
from tqdm import tqdm

from engine.events import encode_event
from engine.flow import FlowSinks, build_flow
from engine.messages import (
    Example,
    GroupAggregates,
    Learned,
    ModelStatus,
    Scored,
    ScoreRequest,
    SegmentChange,
    StageCounters,
)
from engine.settings import Settings
from engine.triggers.intent import RecallIntent

SOURCE_BATCH = 1000
"""Events per TestingSource batch (its default of 1 is ~10x slower)."""


REPLAY_EPOCH = timedelta(days=1)
"""Bytewax's (wall-clock) epoch in a replay. Bytewax snapshots every stateful key
touched in an epoch when it closes, with or without recovery; a replay has no
recovery, so one epoch for the whole run avoids pickling every key group once a
minute (at 1M customers that took most of the customer stage's time). Results do
not depend on it: epochs are wall-clock, and a replay is deterministic."""


REPLAY_GC_THRESHOLD = (0, 10, 10)
"""CPython's GC thresholds during a replay (default 700, 10, 10): a gen-0 threshold of 0
turns automatic collection off. The CDNOW replay leaves 27 objects in reference cycles
(``gc.collect()`` at its end), while collections at (50,000, 10, 10) took about a tenth
of its CPU time (59 of them, 2.5-3.1 of 25 CPU-s to 1997-09-30; off: 0.3 s)."""


@contextmanager
def replay_gc() -> Iterator[None]:
    """Fewer, cheaper garbage collections while a replay runs; restored after.

    A replay allocates millions of short-lived, acyclic outputs; with the default
    gen-0 threshold of 700 the cyclic GC took about a quarter of the CPU time of
    the CDNOW replay, so it does not run during one (:data:`REPLAY_GC_THRESHOLD`).
    Objects that exist before the run (the loaded events) are frozen, so later
    full collections do not scan them. Reference counting frees everything as
    before; only when cycles are looked for changes.
    """
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(*REPLAY_GC_THRESHOLD)
    try:
        yield
    finally:
        # freeze again first: it zeroes the allocation counts, so restoring the
        # threshold does not start a collection over everything the replay made and
        # returns (a quarter of a second on CDNOW); unfreeze puts it all in the
        # oldest generation, as after a collection
        gc.freeze()
        gc.set_threshold(*threshold)
        gc.unfreeze()


def end_of_day_ts(day: date) -> float:
    """The last microsecond of ``day`` in UTC, as epoch seconds."""
    end = datetime.combine(day + timedelta(days=1), dtime(0), tzinfo=UTC) - timedelta(
        microseconds=1
    )
    return end.timestamp()


@dataclass
class ReplayResult:
    """Everything a replay produced, in the order the dataflow emitted it."""

    final_scores: list[Scored]
    examples: list[Example]
    model_status: dict[str, Any] | None
    counters: dict[str, int]
    segment_changes: int
    events_in: int
    dead_letters: list[Any]
    elapsed_s: float
    scores_by_cause: dict[str, int] = field(default_factory=dict)
    learned: list[Learned] = field(default_factory=list)
    """Every example with the probability the model gave it just before learning it."""
    intents: list[RecallIntent] = field(default_factory=list)
    """What the trigger stage emitted (holdout ones too); only with ``rules_dir``."""
    aggregates: list[GroupAggregates] = field(default_factory=list)
    """The newest cohort and lifecycle tables of each (store, key group)."""

    @property
    def events_per_s(self) -> float:
        return self.events_in / self.elapsed_s if self.elapsed_s > 0 else 0.0


class _CauseCounts(StatelessSinkPartition[ScoreRequest]):
    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts

    def write_batch(self, items: list[ScoreRequest]) -> None:
        counts = self.counts
        for request in items:
            counts[request.cause] = counts.get(request.cause, 0) + 1


class CauseCountingSink(DynamicSink[ScoreRequest]):
    """Counts score requests by cause into one dict; keeps nothing else."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _CauseCounts:
        return _CauseCounts(self.counts)


def run_replay(
    events: Sequence[Any],
    settings: Settings,
    *,
    until: date | None = None,
    workers: int = 1,
    progress: bool = False,
    rules_dir: Path | None = None,
    score_all: bool = False,
) -> ReplayResult:
    """Replay ``events`` (sorted by event time) through ``build_flow``.

    Events after ``until`` are not fed (no look-ahead); the run closes with a
    final watermark at the end of ``until`` (or of the last event's day).
    With ``rules_dir`` the trigger stage runs with those rules and the recall
    intents are collected in ``ReplayResult.intents`` (nothing is enqueued).

    Without rules nothing reads the scores of events and checkpoints, so only the
    final requests are scored (``score_all`` scores every request, as live does);
    every request is still counted in ``scores_by_cause``. Learning, and so the
    final scores, are the same either way.
    """
    if until is not None:
        limit = end_of_day_ts(until)
        events = [e for e in events if e.ts <= limit]
    if not events:
        raise ValueError("nothing to replay: no events on or before the cut")
    last_day = until or datetime.fromtimestamp(max(e.ts for e in events), UTC).date()
    settings = settings.model_copy(update={"clock": "event"})
    if rules_dir is not None:
        settings = settings.model_copy(update={"rules_dir": rules_dir})

    encoded: Iterable[bytes] = map(encode_event, events)
    if progress:
        encoded = tqdm(encoded, total=len(events), unit="ev", desc="replay", mininterval=0.5)
    sink_items: list[Any] = []
    dead: list[Any] = []
    examples: list[Example] = []
    scores: list[Scored] = []
    learned: list[Learned] = []
    intents: list[RecallIntent] = []
    requests = CauseCountingSink()
    sinks = FlowSinks(
        learned=TestingSink(learned),
        redis=TestingSink(sink_items),
        dead_letter=TestingSink(dead),
        examples=TestingSink(examples),
        scores=TestingSink(scores),
        recalls=TestingSink(intents) if rules_dir is not None else None,
        requests=requests,
    )
    flow = build_flow(
        TestingSource(encoded, batch_size=SOURCE_BATCH),
        sinks,
        settings,
        final_ts=end_of_day_ts(last_day),
        score_causes=None if score_all or rules_dir is not None else frozenset(),
        model_event_order=True,  # same scores whatever the number of workers
        publish_daily=False,  # only the newest tables and counters are kept
        durable=False,  # no recovery: no epoch snapshots of the customers
    )
    with replay_gc():  # also while the outputs are sorted out: millions of live objects
        started = time.perf_counter()
        if workers == 1:
            run_main(flow, epoch_interval=REPLAY_EPOCH)
        else:
            cluster_main(flow, [], 0, epoch_interval=REPLAY_EPOCH, worker_count_per_proc=workers)
        elapsed = time.perf_counter() - started
        return _result(
            events, sink_items, dead, examples, scores, learned, intents, requests, elapsed
        )


def _result(
    events: Sequence[Any],
    sink_items: list[Any],
    dead: list[Any],
    examples: list[Example],
    scores: list[Scored],
    learned: list[Learned],
    intents: list[RecallIntent],
    requests: CauseCountingSink,
    elapsed: float,
) -> ReplayResult:
    """The outputs of a finished replay, sorted out."""
    status = None
    per_group: dict[int, dict[str, int]] = {}
    changes = 0
    aggregates: dict[tuple[str, int], GroupAggregates] = {}
    for item in sink_items:
        if isinstance(item, ModelStatus):
            status = item.metrics
        elif isinstance(item, StageCounters):
            per_group[item.key_group] = item.counts  # cumulative: keep the newest
        elif isinstance(item, SegmentChange):
            changes += 1
        elif isinstance(item, GroupAggregates):
            aggregates[(item.store_id, item.key_group)] = item
    counters: dict[str, int] = {}
    for counts in per_group.values():
        for name, value in counts.items():
            counters[name] = counters.get(name, 0) + value
    by_cause = dict(sorted(requests.counts.items()))
    final = sorted(
        (s for s in scores if s.request.cause == "final"),
        key=lambda s: (s.request.store_id, _numeric_first(s.request.customer_id)),
    )
    return ReplayResult(
        final_scores=final,
        examples=examples,
        model_status=status,
        counters=counters,
        segment_changes=changes,
        events_in=len(events),
        dead_letters=dead,
        elapsed_s=elapsed,
        scores_by_cause=by_cause,
        learned=learned,
        intents=intents,
        aggregates=[aggregates[key] for key in sorted(aggregates)],
    )


def _numeric_first(customer_id: str) -> tuple[int, str]:
    """Sort ids numerically when they are numbers (CDNOW's are), else as text."""
    return (int(customer_id), "") if customer_id.isdigit() else (1 << 62, customer_id)


def write_scores_csv(result: ReplayResult, path: Path) -> int:
    """The stable contract: header ``customer_id,churn_probability``, one row a customer."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["customer_id", "churn_probability"])
        for scored in result.final_scores:
            writer.writerow([scored.request.customer_id, f"{scored.churn_probability:.6f}"])
    return len(result.final_scores)
