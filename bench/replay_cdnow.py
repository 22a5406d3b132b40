"""Wall time of the full CDNOW replay through ``build_flow``, and where it goes.

    python bench/replay_cdnow.py [--score-all] [--profile] [--stage-only]
    python bench/replay_cdnow.py --rules rules/default.yaml   # the model and default rules

Times ``run_replay(load_cdnow(), Settings(), until=None)``: all 69,659 CDNOW records,
horizon 90 days, the whole dataflow (decode, customer stage, model learn + score), as
``churnflow replay`` runs it: without rules only the final score requests are scored
(nothing reads the others; ``replay_cdnow_scores_<cause>`` still counts every request).
``--score-all`` scores every request, as the live dataflow and a replay with rules do.
``--rules FILE`` replays as ``churnflow replay --rules FILE --assume-consent email``
does (every request scored, the trigger stage on, every customer consenting to email so
that rules fire; its figures are named ``replay_cdnow_rules_*``).
Loading the file is not timed (``replay_cdnow_cpu_s``: process CPU time of the replay,
steadier than wall time on a shared machine); ``run_replay``'s own clock is used (it includes
``encode_event`` of every record, which runs lazily inside ``run_main``).

``--stage-only`` times the customer stage alone instead, without Bytewax or the model:
every record decoded (``decode_item``, timed apart) and folded into its key group's
``KeyGroupCustomers.on_event`` in event order, then ``final`` of every group, as the
replay's customer stage runs (``publish_daily=False``); outputs are counted, then dropped.

Prints one figure per line, ``name value unit``; never asserts timings.

The model stage's share: ``ChurnModel.learn``, ``learn_many`` and ``score_batch`` are
wrapped, in this process only, with a ``perf_counter`` accumulator (two clock reads
per call), giving ``replay_cdnow_model_learn_s`` / ``_score_s`` and their shares of
the replay. ``--profile`` runs the replay a second time under cProfile and prints the
top 10 functions by cumulative time to stderr (the profiled run's own wall time is
printed as ``replay_cdnow_profiled_s``; the profiler inflates it).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import platform
import pstats
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.messages import DeadLetter  # noqa: E402
from engine.models.online import ChurnModel  # noqa: E402
from engine.settings import Settings  # noqa: E402
from replay.harness import run_replay  # noqa: E402
from replay.loaders import load_cdnow  # noqa: E402

SPENT: dict[str, float] = {"learn": 0.0, "score_batch": 0.0}
CALLS: dict[str, int] = {"learn": 0, "score_batch": 0}
INSIDE = [False]


def emit(name: str, value: float | int | str, unit: str) -> None:
    if isinstance(value, float):
        value = f"{value:.6g}" if abs(value) < 1e6 else f"{value:.0f}"
    print(f"{name} {value} {unit}", flush=True)


def loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}/{five:.2f}/{fifteen:.2f}"


def _timed(name: str, fn: Callable[..., Any], batch: bool = False) -> Callable[..., Any]:
    """``fn`` adding its time to ``SPENT[name]`` and its calls (``batch``: the length
    of its first argument after ``self``) to ``CALLS[name]``."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if INSIDE[0]:  # learn_many falling back to learn: counted once, outside
            return fn(*args, **kwargs)
        INSIDE[0] = True
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            SPENT[name] += time.perf_counter() - started
            CALLS[name] += len(args[1]) if batch else 1
            INSIDE[0] = False

    wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
    return wrapper


def stage_only(events: list[Any], settings: Settings) -> None:
    """The customer stage alone on ``events`` (see ``--stage-only``), with its figures."""
    from dataclasses import replace

    from engine.customers import KeyGroupCustomers
    from engine.events import encode_event
    from engine.flow import decode_item, stage_config
    from engine.keygroups import key_group
    from replay.harness import end_of_day_ts, replay_gc

    config = replace(stage_config(settings), publish_daily=False)
    last_day = datetime.fromtimestamp(max(e.ts for e in events), UTC).date()
    groups: dict[int, KeyGroupCustomers] = {}
    outputs = 0
    with replay_gc():
        cpu = time.process_time()
        decoded = [decode_item(encode_event(e), settings) for e in events]
        emit("stage_only_decode_cpu_s", time.process_time() - cpu, "s(cpu)")
        cpu = time.process_time()
        for item in decoded:
            assert not isinstance(item, DeadLetter), item
            event, amount = item
            number = key_group(event.store_id, event.customer_id, settings.key_groups)
            group = groups.get(number)
            if group is None:
                group = groups[number] = KeyGroupCustomers(config)
                group.group_id = number
            outputs += len(group.on_event(event, amount))
        for number in sorted(groups):
            outputs += len(groups[number].final(end_of_day_ts(last_day)))
        cpu = time.process_time() - cpu
    emit("stage_only_cpu_s", cpu, "s(cpu)")
    emit("stage_only_outputs", outputs, "items")
    emit("stage_only_events_per_cpu_s", len(events) / cpu, "events/cpu-s")


def with_rules(events: list[Any], settings: Settings, rules_file: Path) -> None:
    """The replay with ``rules_file`` as every store's rules (see ``--rules``)."""
    import shutil
    import tempfile

    from replay.backtest import assume_consent

    fed = list(assume_consent(events, ["email"]))
    emit("replay_cdnow_rules_events", len(fed), "events(orders+consent profiles)")
    with tempfile.TemporaryDirectory(prefix="churnflow-bench-rules-") as tmp:
        shutil.copyfile(rules_file, Path(tmp) / "default.yaml")
        cpu = time.process_time()
        result = run_replay(fed, settings, until=None, rules_dir=Path(tmp))
        cpu = time.process_time() - cpu
    emit("replay_cdnow_rules_s", result.elapsed_s, "s")
    emit("replay_cdnow_rules_events_per_s", result.events_per_s, "events/s")
    emit("replay_cdnow_rules_cpu_s", cpu, "s(cpu)")
    emit("replay_cdnow_rules_scores", sum(result.scores_by_cause.values()), "scores")
    emit("replay_cdnow_rules_intents", len(result.intents), "intents")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", action="store_true", help="cProfile top 10 to stderr")
    parser.add_argument("--score-all", action="store_true", help="score every request")
    parser.add_argument("--stage-only", action="store_true", help="the customer stage alone")
    parser.add_argument("--rules", type=Path, help="replay with this rules file (email consent)")
    args = parser.parse_args(argv)
    settings = Settings()

    emit("date", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "utc")
    emit("nproc", os.cpu_count() or 0, "cpus")
    emit("python", platform.python_version(), "version")
    emit("horizon_days", settings.horizon_days, "days")
    emit("score_all", int(args.score_all), "bool")
    started = time.perf_counter()
    events = load_cdnow()
    emit("load_cdnow_s", time.perf_counter() - started, "s(untimed)")
    emit("replay_cdnow_events", len(events), "events")
    emit("loadavg_before", loadavg(), "1/5/15min")
    if args.stage_only:
        stage_only(events, settings)
        emit("loadavg_after", loadavg(), "1/5/15min")
        return 0
    if args.rules is not None:
        with_rules(events, settings, args.rules)
        emit("loadavg_after", loadavg(), "1/5/15min")
        return 0

    learn, learn_many, score = ChurnModel.learn, ChurnModel.learn_many, ChurnModel.score_batch
    ChurnModel.learn = _timed("learn", learn)  # type: ignore[method-assign]
    ChurnModel.learn_many = _timed("learn", learn_many, batch=True)  # type: ignore[method-assign]
    ChurnModel.score_batch = _timed("score_batch", score)  # type: ignore[method-assign]
    cpu = time.process_time()
    try:
        result = run_replay(events, settings, until=None, score_all=args.score_all)
    finally:
        ChurnModel.learn, ChurnModel.learn_many = learn, learn_many  # type: ignore[method-assign]
        ChurnModel.score_batch = score  # type: ignore[method-assign]
    cpu = time.process_time() - cpu
    elapsed = result.elapsed_s
    status = result.model_status or {}
    emit("replay_cdnow_s", elapsed, "s")
    emit("replay_cdnow_events_per_s", result.events_per_s, "events/s")
    emit("replay_cdnow_cpu_s", cpu, "s(cpu)")
    emit("replay_cdnow_events_per_cpu_s", len(events) / cpu, "events/cpu-s")
    emit("replay_cdnow_examples_emitted", len(result.examples), "examples")
    emit("replay_cdnow_examples_learned", int(status.get("examples_learned", 0)), "examples")
    emit("replay_cdnow_final_scores", len(result.final_scores), "customers")
    for cause, count in sorted(result.scores_by_cause.items()):
        emit(f"replay_cdnow_scores_{cause}", count, "scores")
    emit("replay_cdnow_model_learn_s", SPENT["learn"], "s")
    emit("replay_cdnow_model_learn_share", SPENT["learn"] / elapsed, "fraction")
    emit(
        "replay_cdnow_model_learn_us_per_example",
        1e6 * SPENT["learn"] / max(CALLS["learn"], 1),
        "us",
    )
    emit("replay_cdnow_model_score_s", SPENT["score_batch"], "s")
    emit("replay_cdnow_model_score_share", SPENT["score_batch"] / elapsed, "fraction")
    emit("replay_cdnow_score_batches", CALLS["score_batch"], "calls")
    rest = elapsed - SPENT["learn"] - SPENT["score_batch"]
    emit("replay_cdnow_rest_s", rest, "s(decode+customers+framework+encode)")
    if "roc_auc" in status:
        emit("replay_cdnow_progressive_roc_auc", float(status["roc_auc"]), "auc")
    emit("loadavg_after", loadavg(), "1/5/15min")

    if args.profile:
        prof = cProfile.Profile()
        started = time.perf_counter()
        prof.enable()
        run_replay(events, settings, until=None, score_all=args.score_all)
        prof.disable()
        emit("replay_cdnow_profiled_s", time.perf_counter() - started, "s(under cProfile)")
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(10)
        print("=== cProfile: CDNOW replay, top 10 by cumulative time ===", file=sys.stderr)
        print(buf.getvalue(), file=sys.stderr)
        emit("loadavg_end", loadavg(), "1/5/15min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
