"""The replay report: a real (small) CDNOW replay rendered, and the pure helpers."""

from __future__ import annotations

import random
import re
from datetime import UTC, date, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from engine.messages import Example, Scored, ScoreRequest
from engine.settings import Settings
from replay.harness import ReplayResult, end_of_day_ts, run_replay
from replay.loaders import load_cdnow
from replay.report import (
    gain_curve,
    interpolate,
    monthly_cohorts,
    monthly_metrics,
    order_times,
    roc_auc,
    write_report,
)

CUT = date(1997, 9, 30)
SECTIONS = ("summary", "over-time", "calibration", "scores", "gain", "cohorts", "counters")
NAN = re.compile(r"\bnan\b", re.IGNORECASE)


def ts(day: str) -> float:
    return datetime.fromisoformat(day + "T12:00:00+00:00").timestamp()


@pytest.fixture(scope="module")
def replay() -> tuple[ReplayResult, list[Any], dict[str, int]]:
    """The first 200 CDNOW customers replayed to CUT; labels from the 90 days after it."""
    events = [e for e in load_cdnow() if int(e.customer_id) <= 200]
    result = run_replay(events, Settings(key_groups=8, model_warm_examples=50), until=CUT)
    cut = end_of_day_ts(CUT)
    came_back = {e.customer_id for e in events if cut < e.ts <= cut + 90 * 86400}
    labels = {
        s.request.customer_id: 0 if s.request.customer_id in came_back else 1
        for s in result.final_scores
    }
    return result, [e for e in events if e.ts <= cut], labels


def _pre_outcome_probability(example: Example) -> float:
    """A score from the features at t0 only (stands in for the model's pre-learn p)."""
    return min(0.95, 0.2 + 0.01 * example.features["days_since_last_order"])


def test_full_report(replay: tuple[ReplayResult, list[Any], dict[str, int]], tmp_path: Path):
    result, events, labels = replay
    assert result.final_scores and result.examples and result.model_status
    scored = [(e.resolved_at, e.y, _pre_outcome_probability(e)) for e in result.examples]
    out = tmp_path / "sub" / "report.html"
    write_report(result, out, horizon_days=90, events=events, labels=labels, scored_examples=scored)
    page = out.read_text()
    md = out.with_suffix(".md").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    for anchor in SECTIONS:
        assert f'id="{anchor}"' in page
    for chart in ("Progressive ROC AUC", "Progressive log loss", "Cumulative gain", "Lift"):
        assert f"<title>{chart}</title>" in page
    assert "Calibration" in page and "Cohort retention" in page
    # examples by month, base rate, AUC, log loss, calibration, gain, lift, >= 1 segment
    assert page.count("<svg") >= 8
    assert page.count("<svg") == page.count("</svg>")
    assert not NAN.search(page) and not NAN.search(md)
    assert "<script" not in page and "http://" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', ""
    )
    assert f"{result.events_in:,}" in page and f"{len(result.final_scores):,}" in page
    assert result.model_status is not None
    assert str(result.model_status["model_version"]) in page
    assert 'class="note"' not in page  # every optional input given: no section omitted
    assert "100.0%" in page  # month 0 of every cohort
    assert md.startswith("# churnflow replay report")
    for heading in ("## Summary", "## Metrics over time", "## Cohort retention"):
        assert heading in md
    assert "| 1997-01 |" in md


def test_report_without_optional_inputs(
    replay: tuple[ReplayResult, list[Any], dict[str, int]], tmp_path: Path
):
    result, _, _ = replay
    out = tmp_path / "plain.html"
    write_report(result, out, horizon_days=90)
    page = out.read_text()
    for anchor in SECTIONS:
        assert f'id="{anchor}"' in page
    assert page.count('class="note"') == 3  # monthly metrics, gain/lift, cohorts
    assert "scored_examples" in page and "labels" in page and "No events" in page
    assert "<title>Progressive ROC AUC</title>" not in page
    assert "<title>Cumulative gain</title>" not in page
    assert page.count("<svg") >= 4  # examples by month, base rate, calibration, segments
    assert not NAN.search(page)
    assert out.with_suffix(".md").exists()


def _scored(customer: str, p: float, segment: str) -> Scored:
    request = ScoreRequest("s<1>", customer, 0.0, {}, segment, "low", {}, "final")
    return Scored(request, p, [], "v<1>", False)


def test_report_escapes_text_and_hides_nan(tmp_path: Path):
    result = ReplayResult(
        final_scores=[
            _scored("a", 0.9, "<b>odd</b>"),
            _scored("b", float("nan"), "active"),
            _scored("c", 0.2, "active"),
        ],
        examples=[Example("s<1>", "a", ts("1997-01-01"), {}, 1, ts("1997-04-01"))],
        model_status={
            "model_version": "v<1>",
            "model_warm": False,
            "roc_auc": None,
            "log_loss": float("nan"),
            "brier": float("inf"),
            "base_rate": 1.0,
            "calibration": [
                {"bin": "0.0-0.1", "count": 0, "mean_predicted": None, "observed_rate": None}
            ],
        },
        counters={"events": 3, "late_events": 1},
        segment_changes=0,
        events_in=3,
        dead_letters=[],
        elapsed_s=0.0,
    )
    out = tmp_path / "odd.html"
    write_report(
        result,
        out,
        horizon_days=30,
        labels={"a": 1, "c": 0},
        scored_examples=[(ts("1997-04-01"), 1, float("nan"))],
        events=[],
    )
    page = out.read_text()
    assert "<b>odd</b>" not in page and "&lt;b&gt;odd&lt;/b&gt;" in page
    assert "s&lt;1&gt;" in page and "v&lt;1&gt;" in page
    assert not NAN.search(page) and "inf" not in page.lower().replace("infinite", "")
    assert "—" in page  # missing metrics are shown as a dash
    with pytest.raises(ValueError, match=r"\.md"):
        write_report(result, tmp_path / "x.md", horizon_days=30)


def test_cohort_matrix_exact_shares():
    history = [
        # cohort 1997-01: a, b, c
        ("a", "1997-01-05", "order_created"),
        ("a", "1997-01-25", "order_created"),  # same month twice counts once
        ("b", "1997-01-31", "order_paid"),
        ("c", "1997-01-10", "order_created"),
        ("a", "1997-02-03", "order_created"),
        ("b", "1997-02-28", "order_created"),
        ("c", "1997-03-01", "order_created"),
        ("a", "1997-04-15", "order_created"),
        ("b", "1997-04-15", "order_refunded"),  # not an order placed
        # cohort 1997-03: d, e (e's first event is a page view)
        ("d", "1997-03-31", "order_created"),
        ("e", "1997-02-20", "page_view"),
        ("e", "1997-03-02", "order_created"),
        ("d", "1997-04-01", "order_created"),
    ]
    events = [
        SimpleNamespace(store_id="shop", customer_id=c, ts=ts(day), type=kind)
        for c, day, kind in history
    ]
    matrix = monthly_cohorts(order_times(events))
    assert matrix.cohorts == ["1997-01", "1997-03"]
    assert matrix.sizes == [3, 2]
    assert matrix.active == [[3, 2, 1, 1], [2, 1]]
    assert matrix.shares == [[1.0, 2 / 3, 1 / 3, 1 / 3], [1.0, 0.5]]


def test_cohorts_keep_stores_apart_and_use_utc_months():
    late_utc = datetime(1997, 1, 31, 23, 30, tzinfo=UTC).timestamp()
    events = [
        SimpleNamespace(store_id="s1", customer_id="1", ts=late_utc, type="order_created"),
        SimpleNamespace(store_id="s2", customer_id="1", ts=ts("1997-02-01"), type="order_paid"),
    ]
    matrix = monthly_cohorts(order_times(events))
    assert matrix.cohorts == ["1997-01", "1997-02"] and matrix.sizes == [1, 1]
    assert matrix.shares == [[1.0, 0.0], [1.0]]
    assert monthly_cohorts([]).cohorts == []


def test_gain_curve_and_lift():
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]
    labels = [1, 1, 0, 1, 0, 0, 0, 0, 0, 1]
    curve = gain_curve(scores, labels)
    assert curve[0] == (0.0, 0.0) and curve[-1] == (1.0, 1.0)
    assert curve[2] == pytest.approx((0.2, 0.5))
    assert curve[4] == pytest.approx((0.4, 0.75))
    assert interpolate(curve, 0.2) / 0.2 == pytest.approx(2.5)  # lift at top 20%
    xs = [x for x, _ in curve]
    gains = [g for _, g in curve]
    assert xs == sorted(xs) and gains == sorted(gains)
    # ties are taken together, whatever their input order
    assert gain_curve([0.5, 0.5, 0.5], [1, 0, 0]) == [(0.0, 0.0), (1.0, 1.0)]
    assert gain_curve([0.5, 0.5, 0.5], [0, 0, 1]) == [(0.0, 0.0), (1.0, 1.0)]
    # a perfect ranking reaches every churner within the churn rate
    perfect = gain_curve([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0])
    assert interpolate(perfect, 0.5) == 1.0
    with pytest.raises(ValueError):
        gain_curve([0.1, 0.2], [1])


def test_roc_auc_matches_pair_counting_and_monthly_metrics():
    rng = random.Random(7)
    ys = [rng.randint(0, 1) for _ in range(300)]
    ps = [round(rng.random(), 1) for _ in ys]  # many ties

    def brute(y: list[int], p: list[float]) -> float:
        pos = [s for s, t in zip(p, y, strict=True) if t]
        neg = [s for s, t in zip(p, y, strict=True) if not t]
        wins = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg)
        return wins / (len(pos) * len(neg))

    assert roc_auc(ys, ps) == pytest.approx(brute(ys, ps))
    months = [ts("1997-01-15"), ts("1997-02-15"), ts("1997-03-15")]
    pairs = list(zip(ys, ps, strict=True))
    rows = monthly_metrics((months[i % 3], y, p) for i, (y, p) in enumerate(pairs))
    assert [r.month for r in rows] == ["1997-01", "1997-02", "1997-03"]
    assert sum(r.n for r in rows) == rows[-1].cum_n == len(ys)
    assert rows[-1].cum_roc_auc == pytest.approx(brute(ys, ps))
    first = [(y, p) for i, (y, p) in enumerate(pairs) if i % 3 == 0]
    assert rows[0].roc_auc == pytest.approx(brute([y for y, _ in first], [p for _, p in first]))
