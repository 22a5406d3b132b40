"""The rules backtest (``replay.backtest``) and ``churnflow replay --rules``.

A hand-made history checks the table's numbers exactly; the replays use the
first ``N_CUSTOMERS`` CDNOW customers, as ``tests/test_replay.py`` does.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from engine.events import CustomerProfileEvent, OrderEvent
from engine.settings import Settings
from engine.triggers.intent import RecallIntent
from engine.triggers.rules import load_rules
from replay.backtest import (
    ALL,
    CSV_COLUMNS,
    DAY,
    assume_consent,
    backtest,
    format_table,
    rule_steps,
    write_backtest_csv,
)
from replay.harness import ReplayResult, run_replay
from replay.loaders import cdnow_path, load_cdnow

N_CUSTOMERS = 300
SETTINGS = Settings(key_groups=8, model_warm_examples=50)
RULES = Path(__file__).resolve().parent.parent / "rules" / "default.yaml"

T0 = 1_700_000_000.0
H = 90
END = T0 + 300 * DAY


def order(customer: str, day: float, store: str = "s") -> OrderEvent:
    return OrderEvent(
        type="order_created",
        event_id=f"{store}-{customer}-{day}",
        store_id=store,
        customer_id=customer,
        occurred_at=datetime.fromtimestamp(T0 + day * DAY, UTC),
        order_id=f"{customer}-{day}",
        amount=Decimal(10),
        currency="USD",
    )


def intent(
    customer: str,
    rule: str,
    step: int,
    day: float,
    *,
    holdout: bool = False,
    due_day: float | None = None,
) -> RecallIntent:
    at = T0 + day * DAY
    due = at if due_day is None else T0 + due_day * DAY
    return RecallIntent("s", customer, rule, step, due, at, "email", "t", "en", holdout=holdout)


# Churners (last order + 90 <= day 300): a (dormant at 90), b (290), d (100), f (95).
# c ordered on day 250: not a churner.
HISTORY = [
    order("a", 0),
    order("b", 0),
    order("c", 0),
    order("f", 5),
    order("d", 10),
    order("b", 50),
    order("b", 200),
    order("c", 250),
]
INTENTS = [
    intent("a", "winback", 0, 30),  # resolved, churned; reaches a, lead 60
    intent("b", "winback", 0, 30),  # resolved, b ordered on day 50: not churned; before L
    intent("b", "winback", 0, 240),  # unresolved (330 > 300); reaches b, lead 50
    intent("a", "winback", 1, 60, holdout=True),  # resolved, churned; reaches a, lead 30
    intent("d", "winback", 2, 100),  # exactly at dormancy: lead 0; resolved, churned
    intent("c", "risk", 0, 100, due_day=0),  # resolved, churned (no order in (100, 190])
]
STEPS = [("winback", 0), ("winback", 1), ("winback", 2), ("risk", 0), ("cart", 0)]


def test_table_on_a_hand_made_history() -> None:
    bt = backtest(HISTORY, INTENTS, H, window_end=END, rule_steps=STEPS)
    assert (bt.customers, bt.churners) == (5, 4)
    got = [
        (
            r.rule_id,
            r.step,
            r.customers,
            r.messages,
            r.holdout,
            r.resolved,
            r.churned,
            r.reached,
            r.median_lead_days,
        )
        for r in bt.rows
    ]
    assert got == [
        ("winback", 0, 2, 3, 0, 2, 1, 2, 55.0),
        ("winback", 1, 1, 1, 1, 1, 1, 1, 30.0),
        ("winback", 2, 1, 1, 0, 1, 1, 1, 0.0),
        ("winback", None, 3, 5, 1, 4, 3, 3, 50.0),  # a: earliest reach (60); b 50; d 0
        ("risk", 0, 1, 1, 0, 1, 1, 0, None),
        ("cart", 0, 0, 0, 0, 0, 0, 0, None),
        (ALL, None, 4, 6, 1, 5, 4, 3, 50.0),
    ]
    w0 = bt.row("winback", 0)
    assert (w0.precision, w0.recall) == (0.5, 0.5)
    assert bt.row("winback").recall == 0.75
    assert bt.row("risk", 0).precision == 1.0
    assert bt.row("cart", 0).precision is None
    assert all(r.churners == 4 for r in bt.rows)


def test_options_holdout_and_window() -> None:
    no_holdout = backtest(HISTORY, INTENTS, H, window_end=END, include_holdout=False)
    assert [(r.rule_id, r.step) for r in no_holdout.rows] == [
        ("risk", 0),
        ("winback", 0),
        ("winback", 2),
        ("winback", None),
        (ALL, None),
    ]
    assert (no_holdout.row(ALL).messages, no_holdout.row(ALL).holdout) == (5, 0)
    # a shorter window: only what happened by day 150 counts
    short = backtest(HISTORY, INTENTS, H, window_end=T0 + 150 * DAY)
    assert (short.customers, short.churners) == (5, 5)  # b's last order is now day 50
    w0 = short.row("winback", 0)
    assert (w0.resolved, w0.churned, w0.reached, w0.median_lead_days) == (2, 1, 1, 60.0)
    # default window end: the end of the last event's UTC day
    default = backtest(HISTORY, [], H)
    assert T0 + 250 * DAY < default.window_end < T0 + 251 * DAY
    assert [r.rule_id for r in default.rows] == [ALL]
    with pytest.raises(ValueError):
        backtest(HISTORY, [], 0)


def test_intent_time_send_at_or_due() -> None:
    # a risk intent's nominal due time is the last order; it fired on day 85
    events = [order("x", 0), order("x", 80)]
    late = [intent("x", "risk", 0, 85, due_day=0)]
    by_send = backtest(events, late, H, window_end=END)
    by_due = backtest(events, late, H, window_end=END, time_of="due_ts")
    assert by_send.row("risk", 0).churned == 1  # nothing in (85, 175]
    assert by_due.row("risk", 0).churned == 0  # the day-80 order is in (0, 90]
    assert by_send.row("risk", 0).median_lead_days == 85.0  # dormant at 170


def test_csv_and_table_text(tmp_path: Path) -> None:
    bt = backtest(HISTORY, INTENTS, H, window_end=END, rule_steps=STEPS)
    path = tmp_path / "out" / "bt.csv"
    assert write_backtest_csv([("a.yaml", bt), ("b.yaml", bt)], path) == 2 * len(bt.rows)
    rows = list(csv.reader(path.read_text().splitlines()))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert rows[1] == [
        "a.yaml", "winback", "0", "2", "3", "0", "2", "1", "0.500000", "2", "4",
        "0.500000", "55.000000",
    ]  # fmt: skip
    assert rows[6][:3] == ["a.yaml", "cart", "0"] and rows[6][8] == ""
    text = format_table(bt, title="x")
    assert text.splitlines()[0].endswith("5 customers, 4 churners")
    assert "lead_days" in text.splitlines()[1]


def test_assume_consent_injects_one_profile_per_customer() -> None:
    events = [order("a", 0), order("b", 1), order("a", 2), order("a", 3, store="t")]
    out = list(assume_consent(events, ["email", "sms"]))
    assert [type(e).__name__ for e in out] == [
        "CustomerProfileEvent",
        "OrderEvent",
        "CustomerProfileEvent",
        "OrderEvent",
        "OrderEvent",
        "CustomerProfileEvent",
        "OrderEvent",
    ]
    profiles = [e for e in out if isinstance(e, CustomerProfileEvent)]
    assert [(p.store_id, p.customer_id, p.event_id) for p in profiles] == [
        ("s", "a", "assume-consent:s:a"),
        ("s", "b", "assume-consent:s:b"),
        ("t", "a", "assume-consent:t:a"),
    ]
    assert all(p.consent == {"email": True, "sms": True} for p in profiles)
    assert [p.ts for p in profiles] == [events[0].ts, events[1].ts, events[3].ts]
    long_id = "x" * 125
    (profile, _) = assume_consent([order(long_id, 0, store="s" * 64)], ["email"])
    assert len(profile.event_id) <= 200 and profile.customer_id == long_id


# -- replays ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def subset_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("cdnow") / "CDNOW_subset.txt"
    kept = []
    with cdnow_path().open() as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if number > 1 and fields and int(fields[0]) > N_CUSTOMERS:
                break
            kept.append(line)
    dst.write_text("".join(kept))
    return dst


@pytest.fixture(scope="module")
def subset(subset_file: Path) -> list[OrderEvent]:
    return load_cdnow(subset_file)


@pytest.fixture(scope="module")
def rules_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rules")
    (path / "default.yaml").write_text(RULES.read_text())
    return path


@pytest.fixture(scope="module")
def consent_run(subset: list[OrderEvent], rules_dir: Path) -> ReplayResult:
    return run_replay(list(assume_consent(subset, ["email"])), SETTINGS, rules_dir=rules_dir)


@pytest.fixture(scope="module")
def no_consent_run(subset: list[OrderEvent], rules_dir: Path) -> ReplayResult:
    return run_replay(subset, SETTINGS, rules_dir=rules_dir)


def test_replay_without_consent_messages_nobody(no_consent_run: ReplayResult) -> None:
    assert no_consent_run.intents == []  # CDNOW has no consent: every intent is blocked


def test_backtest_replay_is_deterministic(
    subset: list[OrderEvent],
    rules_dir: Path,
    consent_run: ReplayResult,
    no_consent_run: ReplayResult,
) -> None:
    again = run_replay(list(assume_consent(subset, ["email"])), SETTINGS, rules_dir=rules_dir)
    keys = sorted(i.idempotency_key for i in consent_run.intents)
    assert keys and keys == sorted(i.idempotency_key for i in again.intents)
    assert len(set(keys)) == len(keys)
    steps = rule_steps(load_rules(RULES))
    first = backtest(subset, consent_run.intents, SETTINGS.horizon_days, rule_steps=steps)
    second = backtest(subset, reversed(again.intents), SETTINGS.horizon_days, rule_steps=steps)
    assert first == second
    # the consent profiles change no label (the emission order may differ)
    assert Counter((e.customer_id, e.t0, e.y) for e in no_consent_run.examples) == Counter(
        (e.customer_id, e.t0, e.y) for e in consent_run.examples
    )
    winback = first.row("winback", 0)
    assert winback.messages > 0 and 0 < (winback.precision or 0) <= 1
    assert first.churners > 0 and winback.reached <= first.churners


def test_cli_prints_and_compares_two_rule_sets(subset_file: Path, tmp_path: Path) -> None:
    first_step = "      - after_days: 30\n        template: dormancy_1\n        offer: none\n"
    assert first_step in RULES.read_text()
    late = tmp_path / "late.yaml"  # winback without its 30-day step
    late.write_text(RULES.read_text().replace(first_step, ""))
    out = tmp_path / "bt.csv"
    churnflow = Path(sys.executable).parent / "churnflow"
    env = {**os.environ, "CHURNFLOW_KEY_GROUPS": "8", "CHURNFLOW_MODEL_WARM_EXAMPLES": "50"}
    env["CHURNFLOW_RUN_DIR"] = str(tmp_path / ".run")
    proc = subprocess.run(
        [
            str(churnflow),
            "replay",
            "--source",
            "cdnow",
            "--file",
            str(subset_file),
            "--horizon-days",
            "90",
            "--rules",
            str(RULES),
            "--rules",
            str(late),
            "--assume-consent",
            "email",
            "--backtest-out",
            str(out),
            "--no-progress",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    heads = [line for line in lines if line.startswith("backtest ")]
    assert len(heads) == 2 and str(RULES) in heads[0] and str(late) in heads[1]
    assert heads[0].split(": ", 1)[1] == heads[1].split(": ", 1)[1]  # same churners
    for rule in ("winback", "high-value-risk", "cart", "second-purchase"):
        assert sum(line.startswith(rule + " ") for line in lines) >= 2
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert {r["rules"] for r in rows} == {str(RULES), str(late)}
    by = {(r["rules"], r["rule"], r["step"]): r for r in rows}
    assert int(by[str(RULES), "winback", "0"]["messages"]) > 0
    # first message at 60 days instead of 30: 30 days of lead instead of 60
    assert float(by[str(late), "winback", "0"]["median_lead_days"]) == 30.0
    assert (str(late), "winback", "2") not in by
    assert float(by[str(RULES), "winback", "0"]["median_lead_days"]) == 60.0


def test_cli_rejects_a_bad_rules_file_before_replaying(tmp_path: Path) -> None:
    from engine.cli import build_parser
    from replay.cli import cmd_replay

    bad = tmp_path / "bad.yaml"
    bad.write_text("store_id: demo\nrules:\n  - {id: r, type: risk, threshold: 1.5}\n")
    missing = tmp_path / "none.txt"  # never read: the rules are checked first
    args = build_parser().parse_args(["replay", "--file", str(missing), "--rules", str(bad)])
    with pytest.raises(SystemExit, match="threshold"):
        cmd_replay(args, SETTINGS)
    args = build_parser().parse_args(["replay", "--backtest-out", str(tmp_path / "x.csv")])
    with pytest.raises(SystemExit, match="needs --rules"):
        cmd_replay(args, SETTINGS)
