"""``churnflow simulate``: a synthetic multi-store event stream with a known truth.

churnflow simulate --stores 3 --customers 10000 --days 365 --seed 7 --start 2025-01-01 \\
                   --out sim.jsonl [--truth-out FILE] [--effect 0.1] [--holdout 0.2] \\
                   [--holdout-salt SALT] \\
                   [--kafka [--rate 5000]] [--utc]

Writes one canonical event per line to ``--out`` and the truth (per customer: rate,
dropout, churn, recall group and effect; overall: the true uplift) to
``--truth-out`` (default ``<out without .jsonl>.truth.json``). ``--kafka`` produces
the same lines to the events topic with the idempotent producer, keyed
``store:customer``, at most ``--rate`` events per second (0: as fast as possible).
See :mod:`replay.simulate` for the generative process.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

from tqdm import tqdm

from engine.settings import Settings
from replay.simulate import SimulationConfig, SimulationError, write_simulation


def add_simulate_parser(sub: Any) -> None:
    simulate = sub.add_parser("simulate", help="generate a synthetic event stream with its truth")
    simulate.add_argument("--stores", type=int, default=3)
    simulate.add_argument("--customers", type=int, default=10_000)
    simulate.add_argument("--days", type=int, default=365)
    simulate.add_argument("--seed", type=int, default=7)
    simulate.add_argument("--start", type=date.fromisoformat, default=date(2025, 1, 1))
    simulate.add_argument("--out", type=Path, help="JSONL file of events")
    simulate.add_argument("--truth-out", type=Path, help="truth JSON (default: beside --out)")
    simulate.add_argument("--effect", type=float, default=0.1, help="P(extra order | recall)")
    simulate.add_argument("--holdout", type=float, default=0.2, help="share never messaged")
    simulate.add_argument(
        "--holdout-salt",
        help="draw the holdout as churnflow's rules do with this salt (checkable uplift)",
    )
    simulate.add_argument("--recall-after-days", type=float, default=30.0)
    simulate.add_argument("--effect-window-days", type=float, default=7.0)
    simulate.add_argument("--horizon-days", type=int, default=90)
    simulate.add_argument("--utc", action="store_true", help="UTC timestamps, not local offsets")
    simulate.add_argument("--kafka", action="store_true", help="produce to the events topic")
    simulate.add_argument("--rate", type=float, default=0.0, help="events/s to Kafka (0: max)")
    simulate.add_argument("--no-progress", action="store_true")
    simulate.set_defaults(func=cmd_simulate)


def default_truth_path(out: Path) -> Path:
    """``sim.jsonl`` → ``sim.truth.json``.

    >>> default_truth_path(Path("out/sim.jsonl")).as_posix()
    'out/sim.truth.json'
    """
    stem = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out.with_name(f"{stem}.truth.json")


def paced(
    lines: Iterable[bytes],
    rate: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[bytes]:
    """Yield ``lines`` at no more than ``rate`` per second (``rate <= 0``: unpaced).

    >>> slept = []
    >>> list(paced([b"a", b"b", b"c"], 2.0, clock=lambda: 0.0, sleep=slept.append))
    [b'a', b'b', b'c']
    >>> slept
    [0.5, 1.0]
    """
    if rate <= 0:
        yield from lines
        return
    began = clock()
    for sent, line in enumerate(lines):
        ahead = began + sent / rate - clock()
        if ahead > 0:
            sleep(ahead)
        yield line


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    if args.out is None and not args.kafka:
        raise SystemExit("churnflow simulate needs --out FILE and/or --kafka")
    try:
        config = SimulationConfig(
            stores=args.stores,
            customers=args.customers,
            days=args.days,
            seed=args.seed,
            start=args.start,
            effect=args.effect,
            holdout=args.holdout,
            holdout_salt=args.holdout_salt,
            recall_after_days=args.recall_after_days,
            effect_window_days=args.effect_window_days,
            horizon_days=args.horizon_days,
            local_offsets=not args.utc,
        )
    except SimulationError as exc:
        raise SystemExit(str(exc)) from None
    truth_out = args.truth_out or (default_truth_path(args.out) if args.out else None)
    started = time.perf_counter()
    with tqdm(
        total=config.customers, unit="cust", desc="simulate", disable=args.no_progress
    ) as bar:
        run = write_simulation(config, args.out, truth_out, bar.update)
    elapsed = time.perf_counter() - started
    with run:
        summary = run.truth["summary"]
        events = summary["events"]
        where = f" to {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)" if args.out else ""
        print(
            f"simulated {config.customers} customers, {events} events{where} in "
            f"{elapsed:.1f} s ({events / elapsed:,.0f} events/s)"
        )
        if truth_out is not None:
            print(f"truth: {truth_out}")
        uplift = summary["true_uplift"]
        print(
            f"orders {summary['orders']}, churned {summary['churned']}, recall-eligible "
            f"{summary['eligible']} (treated {summary['treated']}, holdout {summary['holdout']}), "
            f"true uplift {'n/a' if uplift is None else f'{uplift:.4f}'}"
        )
        if args.kafka:
            from engine.cli import produce_lines

            lines = paced(run.lines(), args.rate)
            sent = produce_lines(settings, lines, total=events)
            print(f"produced {sent} events to {settings.events_topic}")
    return 0
