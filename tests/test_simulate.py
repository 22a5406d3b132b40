"""The store simulator: deterministic, valid wire events, consistent with its truth."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from pathlib import Path

import orjson
from bytewax.testing import TestingSink, TestingSource, run_main

from engine.events import OrderEvent, decode_event
from engine.flow import FlowSinks, build_flow
from engine.settings import Settings
from engine.triggers.assignment import in_holdout
from engine.triggers.intent import RecallIntent
from replay.harness import run_replay
from replay.simulate import (
    SimulationConfig,
    read_events,
    simulate,
    write_recall_rules,
    write_simulation,
)


def lines_of(config: SimulationConfig) -> list[bytes]:
    with simulate(config) as run:
        return list(run.lines())


def test_same_seed_same_bytes_other_seed_other_bytes():
    config = SimulationConfig(stores=2, customers=60, days=120, seed=3)
    assert lines_of(config) == lines_of(config)
    assert lines_of(config) != lines_of(SimulationConfig(stores=2, customers=60, days=120, seed=4))


def test_every_line_decodes_in_time_order_and_matches_the_truth(tmp_path: Path):
    config = SimulationConfig(stores=3, customers=200, days=240, seed=11)
    out, truth_out = tmp_path / "sim.jsonl", tmp_path / "sim.truth.json"
    write_simulation(config, out, truth_out).close()
    events = read_events(out)
    assert [e.ts for e in events] == sorted(e.ts for e in events)
    assert len({e.store_id for e in events}) == 3
    currencies = {e.currency for e in events if isinstance(e, OrderEvent)}
    assert len(currencies) >= 3
    truth = orjson.loads(truth_out.read_bytes())
    assert truth["summary"]["events"] == len(events)
    orders: dict[str, list[float]] = defaultdict(list)
    for event in events:
        if isinstance(event, OrderEvent) and event.type == "order_created":
            orders[event.customer_id].append(event.ts)
    for customer in truth["customers"]:
        ts = orders.get(customer["customer_id"], [])
        assert len(ts) == customer["orders"]
        recall = customer["recall"]
        responded = recall is not None and recall.get("responded")
        if customer["dropout_at"] and not responded:
            dropout = datetime.fromisoformat(customer["dropout_at"]).timestamp()
            assert all(t <= dropout for t in ts)  # no order after dropping out


def test_configured_effect_shows_in_the_truth():
    with simulate(SimulationConfig(customers=1500, days=365, seed=5, effect=0.3)) as run:
        summary = run.truth["summary"]
    assert summary["treated"] > 100
    assert abs(summary["response_rate_treated"] - 0.3) < 0.06


def test_a_simulation_replays_through_the_dataflow():
    config = SimulationConfig(stores=1, customers=80, days=200, seed=2)
    with simulate(config) as run:
        events = [decode_event(line) for line in run.lines()]
    result = run_replay(events, Settings(key_groups=4))
    assert not result.dead_letters
    buyers = {e.customer_id for e in events if isinstance(e, OrderEvent)}
    assert {s.request.customer_id for s in result.final_scores} == buyers


def test_churnflow_holds_out_exactly_the_simulators_holdout(tmp_path: Path) -> None:
    """With ``holdout_salt``, the simulator draws its holdout as churnflow's rules do:
    replayed through ``build_flow`` with :func:`recall_rules`, churnflow's holdout
    intents go to the simulator's holdout customers and its queued ones to the
    treated, and the simulator's recall-eligible customers are reached."""
    config = SimulationConfig(
        stores=2, customers=300, days=240, seed=9, holdout=0.3, holdout_salt="t", effect=0.2
    )
    write_recall_rules(config, tmp_path)
    intents: list[RecallIntent] = []
    sinks = FlowSinks(
        redis=TestingSink([]), dead_letter=TestingSink([]), recalls=TestingSink(intents)
    )
    with simulate(config) as run:
        lines, truth = list(run.lines()), run.truth
    run_main(build_flow(TestingSource(lines, batch_size=500), sinks, Settings(rules_dir=tmp_path)))

    groups = {
        (c["store_id"], c["customer_id"]): c["recall"]["group"]
        for c in truth["customers"]
        if c["recall"] is not None
    }
    held = {(i.store_id, i.customer_id) for i in intents if i.holdout}
    queued = {(i.store_id, i.customer_id) for i in intents if not i.holdout}
    assert held and queued
    assert not held & {k for k, g in groups.items() if g == "treated"}
    assert not queued & {k for k, g in groups.items() if g == "holdout"}
    for key in held | queued:  # the same hash decides, eligible for the simulator or not
        assert in_holdout(*key, "t", 0.3) == (key in held)
    reached = [k for k in groups if k in held | queued]
    assert len(reached) >= 0.9 * len(groups), (len(reached), len(groups))
