"""``churnflow replay``: backtest the dataflow on history.

churnflow replay --source cdnow [--file PATH] --until YYYY-MM-DD --horizon-days H
                 --scores-out FILE.csv [--report-out FILE.html] [--workers N]
churnflow replay --source table --file events.csv --map customer_id=cust,occurred_at=ts,...
churnflow replay ... --rules rules/default.yaml [--rules other.yaml] [--assume-consent email]
                 [--backtest-out FILE.csv]

``--rules`` replays once per rules file (the file is used as ``default.yaml`` of a
temporary rules directory, so it applies to every store) and prints the backtest
table of :mod:`replay.backtest`; the churners, hence the recall denominators, are
the same for every file. ``--assume-consent CHANNEL`` (replay only) grants every
customer consent on CHANNEL, for histories without consent (CDNOW).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

from engine.events import CHANNELS
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
    replay.add_argument(
        "--rules",
        type=Path,
        action="append",
        metavar="FILE",
        help="backtest this rules file (repeat to compare rule sets on the same history)",
    )
    replay.add_argument("--backtest-out", type=Path, help="CSV of the backtest table(s)")
    replay.add_argument(
        "--assume-consent",
        action="append",
        choices=CHANNELS,
        metavar="CHANNEL",
        help="replay only: every customer consents to CHANNEL (repeatable); "
        f"one of {', '.join(CHANNELS)}",
    )
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


def _summary(result: Any) -> None:
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


def _load_rules_files(paths: list[Path]) -> list[tuple[Path, Any]]:
    """Validate every ``--rules`` file first: the engine would only log a bad one."""
    from engine.errors import ConfigError
    from engine.triggers.rules import load_rules

    loaded = []
    for path in paths:
        try:
            loaded.append((path, load_rules(path)))
        except (ConfigError, OSError) as exc:
            raise SystemExit(f"--rules {path}: {exc}") from None
    return loaded


def _run_backtests(
    args: argparse.Namespace,
    loaded: list[tuple[Path, Any]],
    events: list[Any],
    fed: list[Any],
    settings: Settings,
) -> Any:
    """One replay per ``--rules`` file, its table printed; returns the first result."""
    from replay.backtest import backtest, format_table, rule_steps, write_backtest_csv
    from replay.harness import end_of_day_ts, run_replay

    kept = [e for e in events if args.until is None or e.ts <= end_of_day_ts(args.until)]
    if not kept:
        raise SystemExit("nothing to replay: no events on or before the cut")
    window_end = end_of_day_ts(args.until) if args.until is not None else None
    first = None
    tables = []
    for path, rules in loaded:
        with tempfile.TemporaryDirectory(prefix="churnflow-rules-") as tmp:
            shutil.copyfile(path, Path(tmp) / "default.yaml")
            result = run_replay(
                fed,
                settings,
                until=args.until,
                workers=args.workers,
                progress=not args.no_progress,
                rules_dir=Path(tmp),
            )
        _summary(result)
        first = first or result
        bt = backtest(
            kept,
            result.intents,
            args.horizon_days,
            window_end=window_end,
            rule_steps=rule_steps(rules),
        )
        tables.append((str(path), bt))
        print(format_table(bt, title=str(path)))
        if not result.intents and not args.assume_consent:
            print(
                "no intents: customers without a consent profile are never messaged "
                "(no_consent); for a history without consent try --assume-consent email"
            )
    if args.backtest_out:
        rows = write_backtest_csv(tables, args.backtest_out)
        print(f"wrote {rows} backtest rows to {args.backtest_out}")
    return first


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from replay.harness import run_replay, write_scores_csv

    if args.backtest_out and not args.rules:
        raise SystemExit("--backtest-out needs --rules")
    loaded = _load_rules_files(args.rules or [])
    events = _load(args)
    settings = settings.model_copy(update={"horizon_days": args.horizon_days})
    fed = events
    if args.assume_consent:
        from replay.backtest import assume_consent

        fed = list(assume_consent(events, args.assume_consent))
    if loaded:
        result = _run_backtests(args, loaded, events, fed, settings)
    else:
        result = run_replay(
            fed, settings, until=args.until, workers=args.workers, progress=not args.no_progress
        )
        _summary(result)
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
