"""What the cold-start prior's fits cost in the plain loop of ``bench/e2e_live.py``.

    python bench/prior_fit.py [--events 100000] [--customers 10000] [--seed 7]

Runs ``e2e_live.plain_loop`` (decode, customer stage, the model stage's own logic) on
the simulated stream ``e2e_live`` makes, with :func:`engine.models.prior.fit_pareto_nbd`
timed in CPU seconds, in this process only. Prints ``name value unit`` lines: the
plain loop's CPU seconds, how many fits ran and their CPU seconds (total, largest),
and the mean negative log-likelihood each fit reached. Never asserts timings.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from customer_stage import emit, loadavg  # noqa: E402
from e2e_live import make_stream, plain_loop  # noqa: E402

from engine.models import prior  # noqa: E402
from engine.settings import Settings  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    fit_seconds: list[float] = []
    fit_losses: list[float] = []
    fit = prior.fit_pareto_nbd

    def timed_fit(x: Any, t_x: Any, big_t: Any) -> prior.ParetoNBDParams:
        started = time.process_time()
        params = fit(x, t_x, big_t)
        fit_seconds.append(time.process_time() - started)
        weights = prior.log_likelihood(params, np.asarray(x), np.asarray(t_x), np.asarray(big_t))
        fit_losses.append(float(-weights.mean()))
        return params

    prior.fit_pareto_nbd = timed_fit  # fit_sample looks it up in the module at call time
    stream = make_stream(args.events, args.customers, args.seed)
    emit("loadavg_before", loadavg(), "1/5/15min")
    started = time.process_time()
    scores, dead = plain_loop(stream.lines, Settings())
    emit("plain_loop_cpu_s", round(time.process_time() - started, 3), "cpu-s")
    emit("plain_loop_scores", scores, "scores")
    emit("prior_fits", len(fit_seconds), "fits")
    emit("prior_fit_cpu_s_total", round(sum(fit_seconds), 3), "cpu-s")
    emit("prior_fit_cpu_s_max", round(max(fit_seconds, default=0.0), 3), "cpu-s")
    for i, loss in enumerate(fit_losses):
        emit(f"prior_fit_{i}_mean_negative_ll", round(loss, 6), "nats/customer")
    emit("loadavg_after", loadavg(), "1/5/15min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
