"""Recall coverage and uplift error, measured against the simulator's truth.

    python bench/recall_truth.py [--customers 3000] [--stores 2] [--days 365] [--seed 7]
                                 [--effect 0.15] [--holdout 0.3]

Prints one figure per line, ``name value unit``; asserts nothing.

The simulator (``replay.simulate``) runs its own recall experiment: the first time a
reachable customer has been silent ``recall_after_days`` (30), it sends a ``winback``
message unless the customer is held out, and a treated customer orders within 7 days
with probability ``--effect``. Its holdout is drawn with churnflow's own assignment
(``holdout_salt``), so churnflow, replaying the stream through the real ``build_flow``
with a ``winback`` dormancy rule at 30 days and the same holdout fraction and salt in
every store's rules file, holds out the same customers and records their holdout
intents; the effects stage attributes orders to the simulator's sends and to those
intents (7-day window). Then:

* ``uplift_true``: the truth's mean individual uplift over the recall-eligible
  customers (``responded and not baseline_converted``, counterfactuals included);
* ``uplift_estimate`` with ``uplift_ci_low``/``_high``: churnflow's treated minus
  holdout conversion rate of rule ``winback`` summed over its rows, with Newcombe's
  95% interval (what ``GET /campaigns`` shows per row); ``uplift_error`` = estimate
  minus truth, ``uplift_ci_covers_truth`` 1 or 0; ``uplift_observed_in_truth``: the
  treated minus holdout conversion rate of the simulator's own groups (what a perfect
  tracker would see in this sample), and ``uplift_error_vs_observed``: churnflow's
  estimate minus it — the tracking error, without the sampling noise;
* ``recall_coverage``: of the customers who truly dropped out, had a consented
  channel and whose dropout left 30 days of silence before the end, the share that
  churnflow's rule reached (an intent, queued or held out, after the last order);
* ``recall_precision_dropped_out``: of the customers churnflow's rule reached, the
  share that had truly dropped out when the first intent was due (the simulator's
  dropout happens only after a repeat purchase, as in BG/NBD, so one-time buyers never
  count); ``recall_precision_no_order_90d``: the share that placed no order of their own
  (the simulated recall's order aside) in the 90 days after it — the customers a recall
  was worth sending to; ``recall_days_after_last_order_p50``: median days from the
  last order before the intent to the intent's due time.

Runs in this process (TestingSource → ``build_flow`` → in-memory sinks); no broker or
Redis is involved, as nothing here measures them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from bytewax.testing import TestingSink, TestingSource, run_main

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.effects import EffectsSnapshot, newcombe_interval  # noqa: E402
from engine.events import decode_event  # noqa: E402
from engine.flow import FlowSinks, build_flow  # noqa: E402
from engine.settings import Settings  # noqa: E402
from engine.triggers.intent import RecallIntent  # noqa: E402
from replay.simulate import (  # noqa: E402
    RECALL_RULE_ID,
    SimulationConfig,
    simulate,
    write_recall_rules,
)

SALT = "recall-truth"
DAY = 86_400.0


def rule_counts(snapshots: list[EffectsSnapshot], rule_id: str) -> dict[str, int]:
    """The rule's counters summed over its rows and the newest snapshot of each key group.

    >>> from engine.effects import RowKey
    >>> a = EffectsSnapshot("s", 0, {RowKey("w", 0, None, "email"): {"sent": 2}}, {})
    >>> b = EffectsSnapshot("s", 0, {RowKey("w", 0, None, "email"): {"sent": 5}}, {})
    >>> rule_counts([a, b], "w")
    {'sent': 5}
    """
    latest = {(s.store_id, s.key_group): s for s in snapshots}
    total: dict[str, int] = {}
    for snapshot in latest.values():
        for row, counts in snapshot.rows.items():
            if row.rule_id == rule_id:
                for name, value in counts.items():
                    total[name] = total.get(name, 0) + value
    return total


def _ts(iso: str | None) -> float | None:
    return None if iso is None else datetime.fromisoformat(iso).timestamp()


def order_times(lines: list[bytes]) -> dict[tuple[str, str], list[float]]:
    """Every customer's ``order_created`` times, from the stream itself."""
    orders: dict[tuple[str, str], list[float]] = {}
    for line in lines:
        if b'"order_created"' not in line:
            continue
        event = decode_event(line)
        if event.type == "order_created":
            key = (event.store_id, event.customer_id)
            orders.setdefault(key, []).append(event.occurred_at.timestamp())
    return orders


def coverage(
    customers: list[dict[str, Any]],
    intents: list[RecallIntent],
    orders: dict[tuple[str, str], list[float]],
    end_ts: float,
    after_days: float,
    lapse_days: float = 90.0,
) -> dict[str, float]:
    """Coverage, precision and timeliness of the rule's first intent per customer."""
    first: dict[tuple[str, str], RecallIntent] = {}
    for intent in sorted(intents, key=lambda i: i.due_ts):
        first.setdefault((intent.store_id, intent.customer_id), intent)
    truth = {(c["store_id"], c["customer_id"]): c for c in customers}
    dropped = [
        key
        for key, c in truth.items()
        if c["churned"]
        and any(c["consent"].values())
        and (_ts(c["last_order_at"]) or end_ts) + after_days * DAY < end_ts
    ]
    reached = [key for key in dropped if key in first]
    gone = [
        key
        for key, intent in first.items()
        if truth[key]["churned"] and (_ts(truth[key]["dropout_at"]) or end_ts) <= intent.due_ts
    ]
    judged = [key for key, i in first.items() if i.due_ts + lapse_days * DAY <= end_ts]
    lapsing = [
        key
        for key in judged
        if not _ordered_within(truth[key], orders.get(key, []), first[key].due_ts, lapse_days)
    ]
    delays = [
        (intent.due_ts - max(before)) / DAY
        for key, intent in first.items()
        if (before := [t for t in orders.get(key, []) if t <= intent.due_ts])
    ]
    nan = float("nan")
    return {
        "recall_dropped_out_customers": float(len(dropped)),
        "recall_reached_customers": float(len(first)),
        "recall_coverage": len(reached) / len(dropped) if dropped else nan,
        "recall_precision_dropped_out": len(gone) / len(first) if first else nan,
        "recall_precision_no_order_90d": len(lapsing) / len(judged) if judged else nan,
        "recall_days_after_last_order_p50": statistics.median(delays) if delays else nan,
    }


def _ordered_within(
    customer: dict[str, Any], times: list[float], since: float, days: float
) -> bool:
    """Whether the customer ordered in ``(since, since + days]``, not counting the order
    the simulated recall caused (the truth's ``recall_order_at``)."""
    recall = customer["recall"] or {}
    caused = _ts(recall.get("recall_order_at"))
    return any(since < t <= since + days * DAY and t != caused for t in times)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=3000)
    parser.add_argument("--stores", type=int, default=2)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--effect", type=float, default=0.15)
    parser.add_argument("--holdout", type=float, default=0.3)
    args = parser.parse_args(argv)
    config = SimulationConfig(
        stores=args.stores,
        customers=args.customers,
        days=args.days,
        seed=args.seed,
        effect=args.effect,
        holdout=args.holdout,
        holdout_salt=SALT,
    )
    with simulate(config) as run, tempfile.TemporaryDirectory() as rules_dir:
        lines = list(run.lines())
        truth = run.truth
        orders = order_times(lines)
        write_recall_rules(config, Path(rules_dir))
        settings = Settings(rules_dir=Path(rules_dir), key_groups=16)
        intents: list[Any] = []
        snapshots: list[Any] = []
        sinks = FlowSinks(
            redis=TestingSink([]),
            dead_letter=TestingSink([]),
            recalls=TestingSink(intents),
            effects=TestingSink(snapshots),
        )
        started = time.perf_counter()
        run_main(build_flow(TestingSource(lines, batch_size=1000), sinks, settings))
        elapsed = time.perf_counter() - started

    counts = rule_counts(snapshots, RECALL_RULE_ID)
    sent, converted = counts.get("sent", 0), counts.get("converted", 0)
    held, held_converted = counts.get("holdout_intents", 0), counts.get("holdout_converted", 0)
    estimate = converted / sent - held_converted / held if sent and held else float("nan")
    low, high = newcombe_interval(converted, sent, held_converted, held)
    summary = truth["summary"]
    true_uplift = summary["true_uplift"]
    rule_intents = [i for i in intents if isinstance(i, RecallIntent)]
    figures: list[tuple[str, float, str]] = [
        ("recall_truth_events", float(len(lines)), "events"),
        ("recall_truth_customers", float(config.customers), "customers"),
        ("recall_truth_replay_s", elapsed, "s"),
        ("sim_eligible", float(summary["eligible"]), "customers"),
        ("sim_treated", float(summary["treated"]), "customers"),
        ("sim_holdout", float(summary["holdout"]), "customers"),
        ("effects_sent", float(sent), "messages"),
        ("effects_converted", float(converted), "conversions"),
        ("effects_holdout_intents", float(held), "intents"),
        ("effects_holdout_converted", float(held_converted), "conversions"),
        ("uplift_true", true_uplift, "share"),
        ("uplift_estimate", estimate, "share"),
        ("uplift_ci_low", low, "share"),
        ("uplift_ci_high", high, "share"),
        ("uplift_error", estimate - true_uplift, "share"),
        ("uplift_observed_in_truth", summary["observed_uplift"], "share"),
        ("uplift_error_vs_observed", estimate - summary["observed_uplift"], "share"),
        ("uplift_ci_covers_truth", float(low <= true_uplift <= high), "bool"),
    ]
    end_ts = config.end_ts
    reach = coverage(truth["customers"], rule_intents, orders, end_ts, config.recall_after_days)
    for name, value in reach.items():
        unit = "days" if name.endswith("_p50") else "customers" if "customers" in name else "share"
        figures.append((name, value, unit))
    for name, value, unit in figures:
        print(f"{name} {value:.6g} {unit}".rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
