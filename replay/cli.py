"""``churnflow replay``: backtest the dataflow on history.

churnflow replay --source cdnow [--file PATH] --until YYYY-MM-DD --horizon-days H
                 --scores-out FILE.csv [--report-out FILE.html] [--workers N]
churnflow replay --source table --file events.csv --map customer_id=cust,occurred_at=ts,...
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path
from typing import Any

from engine.settings import Settings


def add_replay_parser(sub: Any) -> None:
    replay = sub.add_parser("replay", help="backtest the same dataflow on history")
    replay.add_argument("--source", choices=("cdnow", "table"), default="cdnow")
    replay.add_argument("--file", type=Path, help="input file (default: CDNOW from lifetimes)")
    replay.add_argument("--store", default="cdnow", help="store id of the replayed events")
    replay.add_argument(
        "--map",
        default="",
        help="column mapping for --source table: field=column,... (customer_id, occurred_at, "
        "amount, currency, order_id, event_id, type)",
    )
    replay.add_argument("--until", type=date.fromisoformat, help="last day fed (inclusive)")
    replay.add_argument("--horizon-days", type=int, default=90)
    replay.add_argument("--scores-out", type=Path, help="CSV: customer_id,churn_probability")
    replay.add_argument("--report-out", type=Path, help="HTML report (a .md summary beside it)")
    replay.add_argument("--workers", type=int, default=1)
    replay.add_argument("--no-progress", action="store_true")
    replay.set_defaults(func=cmd_replay)


def _load(args: argparse.Namespace) -> list[Any]:
    from replay.loaders import ColumnMapping, load_cdnow, load_table

    if args.source == "cdnow":
        return list(load_cdnow(args.file, store_id=args.store))
    if args.file is None:
        raise SystemExit("--source table needs --file")
    mapping = dict(pair.split("=", 1) for pair in args.map.split(",") if pair)
    result = load_table(args.file, ColumnMapping(**mapping), store_id=args.store)
    for row, _raw, reason in result.rejected:
        print(f"rejected row {row}: {reason}", file=sys.stderr)
    return list(result.events)


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from replay.harness import run_replay, write_scores_csv

    events = _load(args)
    settings = settings.model_copy(update={"horizon_days": args.horizon_days})
    result = run_replay(
        events, settings, until=args.until, workers=args.workers, progress=not args.no_progress
    )
    print(
        f"replayed {result.events_in} events in {result.elapsed_s:.2f} s "
        f"({result.events_per_s:,.0f} events/s); {len(result.final_scores)} customers scored; "
        f"{len(result.examples)} labelled examples; {len(result.dead_letters)} dead letters"
    )
    if result.model_status:
        status = result.model_status
        auc = status.get("roc_auc")
        print(
            f"model {status['model_version']} warm={status['model_warm']} "
            f"progressive ROC AUC={auc if auc is None else round(auc, 4)} "
            f"log loss={status.get('log_loss')}"
        )
    if args.scores_out:
        rows = write_scores_csv(result, args.scores_out)
        print(f"wrote {rows} scores to {args.scores_out}")
    if args.report_out:
        from replay.report import write_report

        labels = None
        if args.until is not None:
            from replay.baselines import churn_labels, end_of_day

            cut = end_of_day(args.until)
            if max(e.ts for e in events) >= cut.timestamp() + args.horizon_days * 86400:
                # evaluation only: the model never saw these later events
                labels = churn_labels(events, cut, args.horizon_days)
        write_report(
            result,
            args.report_out,
            horizon_days=args.horizon_days,
            events=[e for e in events if args.until is None or e.occurred_at.date() <= args.until],
            labels=labels,
            scored_examples=[(x.resolved_at, x.y, x.p) for x in result.learned],
        )
        print(f"wrote report to {args.report_out}")
    return 0
