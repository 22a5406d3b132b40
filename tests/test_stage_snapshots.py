"""Snapshots of the customer stage that stay cheap as a key group grows.

A group's timers live in the customers' records (the heap is rebuilt on restore),
the event-id dedup pickles as arrays, and the records are pickled once per change;
these tests check that a restored group continues exactly as the original,
including after erasures (whose timers stay in the heap) and snapshots in a row.
"""

from __future__ import annotations

import pickle
from array import array

from test_customers import CONFIG, erase, feed, order, ts, view

from engine.customers import KeyGroupCustomers
from engine.keygroups import EventIdDedup


def restored(group: KeyGroupCustomers) -> KeyGroupCustomers:
    return KeyGroupCustomers.restore(group.snapshot())


def test_erased_customers_timers_survive_a_snapshot_and_a_comeback() -> None:
    events = [order("a", 0, "o1"), order("b", 1, "o2"), view("a", 2, "v1"), erase("a", 3, "x")]
    original = KeyGroupCustomers(CONFIG)
    feed(original, events)
    assert original.orphan_timers  # a's timers are still in the heap
    copy = restored(original)
    assert len(copy.timers) == len(original.timers)
    assert copy.counters_message() == original.counters_message()
    rest = [order("a", 5, "o3"), view("b", 40, "v2"), order("c", 200, "o4")]
    a = feed(original, rest) + original.final(ts(400))
    b = feed(copy, rest) + copy.final(ts(400))
    assert a == b
    assert not copy.orphan_timers  # fired (and dropped) with the others


def test_snapshots_in_a_row_equal_one_snapshot() -> None:
    events = [order(c, day, f"o{c}{day}") for day in range(0, 200, 7) for c in ("a", "b", "c")]
    straight = KeyGroupCustomers(CONFIG)
    chained = KeyGroupCustomers(CONFIG)
    out_straight: list[object] = []
    out_chained: list[object] = []
    for start in range(0, len(events), 5):
        chunk = events[start : start + 5]
        out_straight += feed(straight, chunk)
        out_chained += feed(chained, chunk)
        chained = restored(restored(chained))  # a snapshot of a restored group too
    assert out_chained == out_straight
    assert chained.final(ts(500)) == straight.final(ts(500))
    assert sorted(chained.timers) == sorted(straight.timers)


def test_each_record_holds_exactly_its_pending_timers() -> None:
    group = KeyGroupCustomers(CONFIG)
    feed(group, [order("a", 0, "o1"), order("b", 10, "o2"), view("a", 45, "v1")])
    held = sorted(
        (at, seq, kind, key, ref)
        for key, record in group.customers.items()
        for at, seq, kind, ref in record.timers
    )
    assert held == sorted(tuple(timer) for timer in group.timers)


def test_dedup_round_trip_keeps_insertion_order_for_pruning() -> None:
    dedup = EventIdDedup(retention_s=10.0)
    for n, at in enumerate((5.0, 1.0, 20.0, 2.0)):
        dedup.seen_before(f"e{n}", at)
    copy = pickle.loads(pickle.dumps(dedup))
    for d in (dedup, copy):
        d.prune(watermark=16.0)  # forgets e0 and e1, stops at e2, keeps e3 behind it
    assert len(copy) == len(dedup) == 2
    assert copy.seen_before("e3", 2.0) and not copy.seen_before("e0", 5.0)


def test_dedup_from_an_older_pickle() -> None:
    # the former __slots__ state: (None, {"retention_s": ..., "_ids": {hash: time}})
    hashes = [EventIdDedup._hash(f"e{n}") for n in range(3)]
    old = EventIdDedup.__new__(EventIdDedup)
    times = dict(zip(hashes, (1.0, 2.0, 30.0), strict=True))
    old.__setstate__((None, {"retention_s": 10.0, "_ids": times}))
    assert old.seen_before("e1", 2.0)
    assert old._order == array("Q", hashes)
    old.prune(watermark=15.0)
    assert len(old) == 1 and old.seen_before("e2", 30.0)


def test_a_snapshot_does_not_follow_later_events_and_a_whole_pickle_restores_too() -> None:
    group = KeyGroupCustomers(CONFIG)
    feed(group, [order("a", 0, "o1"), view("b", 1, "v1")])
    snap = group.snapshot()
    whole = pickle.dumps(group)  # the older snapshot form: one pickle of the group
    later = [order("a", 10, "o2"), order("b", 12, "o3"), erase("a", 20, "x")]
    feed(group, later)  # must not reach the snapshot taken before
    from_snap = KeyGroupCustomers.restore(pickle.loads(pickle.dumps(snap)))
    from_whole = KeyGroupCustomers.restore(whole)
    assert from_snap.counters["events"] == from_whole.counters["events"] == 2
    a = feed(from_snap, later) + from_snap.final(ts(300))
    b = feed(from_whole, later) + from_whole.final(ts(300))
    assert a == b
    assert b[-1] == group.final(ts(300))[-1]  # the same counters as the original's
