"""Running, progressive-validation metrics of a churn model.

ROC AUC comes from score histograms of positives and negatives (1,000 bins; pairs
in one bin count one half), so it costs O(1) per example and O(bins) to read.

>>> m = ProgressiveMetrics()
>>> for y, p in [(1, 0.9), (0, 0.2), (1, 0.6), (0, 0.7)]:
...     m.update(y, p)
>>> s = m.summary()
>>> s["roc_auc"], s["examples"], s["base_rate"], round(s["brier"], 4)
(0.75, 4, 0.5, 0.175)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

AUC_BINS = 1000
CALIBRATION_BINS = 10
EPS = 1e-15


class ProgressiveMetrics:
    """ROC AUC, log loss, Brier score, base rate and a calibration table."""

    def __init__(self) -> None:
        self.n = 0
        self.positives = 0
        self.log_loss_sum = 0.0
        self.brier_sum = 0.0
        self.last_log_loss = 0.0
        self.pos_hist = [0] * AUC_BINS
        self.neg_hist = [0] * AUC_BINS
        self.cal_count = [0] * CALIBRATION_BINS
        self.cal_pred_sum = [0.0] * CALIBRATION_BINS
        self.cal_pos = [0] * CALIBRATION_BINS

    def update(self, y: int, p: float) -> None:
        """Count one example (label ``y``, predicted ``p``)."""
        self.update_many((y,), (p,))

    def update_many(self, ys: Sequence[int], ps: Sequence[float]) -> list[float]:
        """:meth:`update` with each pair in order (the sums run in the same order);
        returns each example's log loss.

        >>> one, many = ProgressiveMetrics(), ProgressiveMetrics()
        >>> pairs = [(1, 0.9), (0, 0.2), (1, 0.6), (0, 1.0), (1, 0.0)]
        >>> for y, p in pairs:
        ...     one.update(y, p)
        >>> losses = many.update_many([y for y, _ in pairs], [p for _, p in pairs])
        >>> one.__dict__ == many.__dict__, losses[-1] == one.last_log_loss
        (True, True)
        >>> [round(loss, 3) for loss in losses[:3]], many.n, many.positives
        ([0.105, 0.223, 0.511], 5, 3)
        """
        pos_hist, neg_hist = self.pos_hist, self.neg_hist
        cal_count, cal_pred_sum, cal_pos = self.cal_count, self.cal_pred_sum, self.cal_pos
        positives, log_loss_sum, brier_sum = self.positives, self.log_loss_sum, self.brier_sum
        log, high = math.log, 1 - EPS
        losses = []
        for y, p in zip(ys, ps, strict=True):
            p = min(max(p, 0.0), 1.0)
            positives += y
            clipped = min(max(p, EPS), high)
            loss = -log(clipped) if y else -log(1 - clipped)
            losses.append(loss)
            log_loss_sum += loss
            brier_sum += (p - y) ** 2
            auc_bin = min(int(p * AUC_BINS), AUC_BINS - 1)
            (pos_hist if y else neg_hist)[auc_bin] += 1
            cal_bin = min(int(p * CALIBRATION_BINS), CALIBRATION_BINS - 1)
            cal_count[cal_bin] += 1
            cal_pred_sum[cal_bin] += p
            cal_pos[cal_bin] += y
        self.n += len(losses)
        self.positives, self.log_loss_sum, self.brier_sum = positives, log_loss_sum, brier_sum
        if losses:
            self.last_log_loss = losses[-1]
        return losses

    def roc_auc(self) -> float | None:
        negatives = self.n - self.positives
        if self.positives == 0 or negatives == 0:
            return None
        below = 0  # negatives in bins below the current one
        wins = 0.0
        for pos, neg in zip(self.pos_hist, self.neg_hist, strict=True):
            wins += pos * (below + 0.5 * neg)
            below += neg
        return wins / (self.positives * negatives)

    def calibration(self) -> list[dict[str, Any]]:
        table = []
        for i in range(CALIBRATION_BINS):
            count = self.cal_count[i]
            table.append(
                {
                    "bin": f"{i / CALIBRATION_BINS:.1f}-{(i + 1) / CALIBRATION_BINS:.1f}",
                    "count": count,
                    "mean_predicted": self.cal_pred_sum[i] / count if count else None,
                    "observed_rate": self.cal_pos[i] / count if count else None,
                }
            )
        return table

    def summary(self) -> dict[str, Any]:
        n = self.n
        return {
            "examples": n,
            "base_rate": self.positives / n if n else None,
            "roc_auc": self.roc_auc(),
            "log_loss": self.log_loss_sum / n if n else None,
            "brier": self.brier_sum / n if n else None,
            "calibration": self.calibration(),
        }
