"""Key groups: routing, the event-time watermark, timers and event-id dedup.

Bytewax's per-key clocks only move when a key sees an event, so churnflow keys
its customer state by *key group* (as Flink does): ``crc32(store:customer) %
KEY_GROUPS``. Each group owns one :class:`Watermark`, one :class:`TimerHeap` and
one :class:`EventIdDedup`; these are plain classes, tested without a dataflow.

>>> key_group("demo", "42", 128)
121
>>> wm = Watermark(lateness_s=10.0)
>>> wm.observe(100.0), wm.value
(False, 90.0)
>>> wm.observe(50.0), wm.value       # older than the watermark: late, no movement
(True, 90.0)
>>> timers = TimerHeap()
>>> timers.push(95.0, "label", "demo\\x1f42", 5.0).seq
1
>>> _ = timers.push(80.0, "checkpoint", "demo\\x1f42", 0.0)
>>> timers.pop_next_due(wm.value).at, timers.pop_next_due(wm.value)
(80.0, None)
"""

from __future__ import annotations

import heapq
import zlib
from array import array
from collections.abc import Iterator
from typing import Any, NamedTuple


def key_group(store_id: str, customer_id: str, key_groups: int) -> int:
    """The key group of a customer: stable across processes and releases."""
    return zlib.crc32(f"{store_id}:{customer_id}".encode()) % key_groups


class Watermark:
    """The largest event time seen minus the allowed lateness; it never goes back."""

    __slots__ = ("lateness_s", "max_event_ts", "value")

    def __init__(self, lateness_s: float) -> None:
        self.lateness_s = lateness_s
        self.max_event_ts = float("-inf")
        self.value = float("-inf")

    def observe(self, ts: float) -> bool:
        """Take an event time into account; return True when the event is late."""
        late = ts <= self.value  # timers at the watermark itself have already fired
        if ts > self.max_event_ts:
            self.max_event_ts = ts
            self.value = max(self.value, ts - self.lateness_s)
        return late

    def advance_to(self, ts: float) -> None:
        """Move the watermark to ``ts`` (wall clock when idle, or a replay's end)."""
        if ts > self.value:
            self.value = ts


class Timer(NamedTuple):
    """One timer; a plain tuple, so heaps of them pickle fast in snapshots."""

    at: float
    seq: int
    kind: str
    customer_key: str
    ref: float
    """What the timer was set for (a prediction point's t0, or the last order time
    it was scheduled from), so that a stale timer can be recognised when it fires."""


class TimerHeap:
    """A min-heap of event-time timers; fires in (time, insertion) order."""

    __slots__ = ("_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[Timer] = []
        self._seq = 0

    def push(self, at: float, kind: str, customer_key: str, ref: float) -> Timer:
        self._seq += 1
        timer = Timer(at, self._seq, kind, customer_key, ref)
        heapq.heappush(self._heap, timer)
        return timer

    @classmethod
    def rebuild(cls, seq: int, timers: list[Timer]) -> TimerHeap:
        """A heap holding ``timers`` (pushed earlier, ``seq`` the last number used).

        Timers fire in (time, number) order, which is unique, so a rebuilt heap
        fires exactly as the one it was rebuilt from.
        """
        heap = cls()
        heap._seq = seq
        heap._heap = timers
        heapq.heapify(timers)
        return heap

    @property
    def seq(self) -> int:
        """The number of the last timer pushed."""
        return self._seq

    def __iter__(self) -> Iterator[Timer]:
        """The pending timers, in no particular order."""
        return iter(self._heap)

    def pop_next_due(self, watermark: float) -> Timer | None:
        """Remove and return the earliest timer at or before the watermark, if any.

        Firing one at a time lets a timer that schedules another due timer (a
        checkpoint that sets the next one) see it fire in time order.
        """
        if self._heap and self._heap[0].at <= watermark:
            return heapq.heappop(self._heap)
        return None

    def next_at(self) -> float | None:
        return self._heap[0].at if self._heap else None

    def __getstate__(self) -> tuple[int, list[tuple[Any, ...]]]:
        # plain tuples: pickling a NamedTuple runs Python code for every timer
        return self._seq, list(map(tuple, self._heap))

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = state[1]["_seq"], state[1]["_heap"]  # the default __slots__ state
        self._seq, heap = state
        self._heap = [Timer(*timer) for timer in heap]

    def __len__(self) -> int:
        return len(self._heap)


class EventIdDedup:
    """Remembers event ids for ``retention_s`` of event time past the watermark.

    Webhooks are retried within minutes to hours; an id is forgotten once the
    watermark is more than ``retention_s`` past the event's own time, so memory
    stays bounded. Ids are kept as 64-bit hashes: a set for lookups, and two
    arrays (hashes and event times, in insertion order) for pruning and pickling,
    so a snapshot copies two buffers instead of pickling one object per id.

    >>> d = EventIdDedup(retention_s=100.0)
    >>> d.seen_before("a", 10.0), d.seen_before("a", 10.0)
    (False, True)
    >>> import pickle; len(pickle.loads(pickle.dumps(d)))
    1
    >>> d.prune(watermark=500.0); len(d)
    0
    """

    __slots__ = ("retention_s", "_ids", "_order", "_times")

    def __init__(self, retention_s: float) -> None:
        self.retention_s = retention_s
        self._ids: set[int] = set()
        self._order = array("Q")
        """The remembered hashes, in insertion order."""
        self._times = array("d")
        """Each remembered hash's event time, in the same order."""

    @staticmethod
    def _hash(event_id: str) -> int:
        data = event_id.encode()
        return (zlib.crc32(data) << 32) | zlib.adler32(data)

    def seen_before(self, event_id: str, ts: float) -> bool:
        """True when the id was seen; otherwise remember it and return False."""
        h = self._hash(event_id)
        if h in self._ids:
            return True
        self._ids.add(h)
        self._order.append(h)
        self._times.append(ts)
        return False

    def prune(self, watermark: float) -> None:
        """Forget ids older than the retention, oldest insertions first.

        Ids arrive roughly in event-time order, so the scan stops at the first id
        still inside the retention: amortised O(1) per id. An out-of-order old id
        behind a newer one is kept a little longer, never forgotten early.
        """
        horizon = watermark - self.retention_s
        times = self._times
        stale = 0
        for ts in times:
            if ts >= horizon:
                break
            stale += 1
        if stale:
            self._ids.difference_update(self._order[:stale])
            del self._order[:stale]
            del times[:stale]

    def __getstate__(self) -> tuple[float, array, array]:
        return self.retention_s, self._order, self._times

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            # the former __slots__ state: one dict of hash -> time, in insertion order
            slots = state[1]
            state = (
                slots["retention_s"],
                array("Q", slots["_ids"].keys()),
                array("d", slots["_ids"].values()),
            )
        self.retention_s, self._order, self._times = state
        self._ids = set(self._order)

    def __len__(self) -> int:
        return len(self._ids)
