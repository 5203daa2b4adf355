"""Paired comparisons over held-out subjects (the model vs a baseline) and rank correlation with age.

:func:`paired`: wins / ties / losses (a tie is an absolute difference <= ``tie_tol``), the mean difference
(model - baseline), and the two-sided Wilcoxon signed-rank p-value from ``scipy.stats.wilcoxon`` (default
``zero_method="wilcox"``: zero differences are dropped; p is None when every difference is zero or fewer
than 2 pairs remain).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats as sps

TIE_TOL = 1e-9
TEST = "scipy.stats.wilcoxon (paired, two-sided, zero_method='wilcox')"


def paired(model: Sequence[float], baseline: Sequence[float], tie_tol: float = TIE_TOL) -> dict:
    """Paired comparison of two equal-length score vectors (higher = better)."""
    a, b = np.asarray(model, np.float64), np.asarray(baseline, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores must be two vectors of one length, got {a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    diff = a - b
    wins = int(np.sum(diff > tie_tol))
    losses = int(np.sum(diff < -tie_tol))
    ties = int(diff.size - wins - losses)
    p = None
    if np.count_nonzero(np.abs(diff) > tie_tol) >= 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # small-sample / ties notes from scipy
            result = sps.wilcoxon(a, b, alternative="two-sided")
        p = float(result.pvalue) if math.isfinite(float(result.pvalue)) else None
    return {"n": int(diff.size), "wins": wins, "ties": ties, "losses": losses,
            "mean_diff": float(diff.mean()) if diff.size else float("nan"), "wilcoxon_p": p}


def win_fraction(model: Sequence[float], baseline: Sequence[float], tie_tol: float = TIE_TOL) -> float:
    """Fraction of pairs where the model is strictly better (ties count as not better)."""
    result = paired(model, baseline, tie_tol)
    return result["wins"] / result["n"] if result["n"] else float("nan")


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman rho, or None when undefined (fewer than 3 points or a constant vector)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(sps.spearmanr(x, y).statistic)
