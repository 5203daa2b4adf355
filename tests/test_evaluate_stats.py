import numpy as np
import pytest
from scipy.stats import wilcoxon

from diffdef.evaluate.stats import paired, spearman, win_fraction


def test_known_wins_ties_losses_and_mean_difference():
    r = paired([0.5, 0.6, 0.7, 0.8], [0.4, 0.6, 0.9, 0.7])
    assert (r["wins"], r["ties"], r["losses"], r["n"]) == (2, 1, 1, 4)
    assert r["mean_diff"] == pytest.approx((0.1 + 0 - 0.2 + 0.1) / 4)
    assert win_fraction([0.5, 0.6, 0.7, 0.8], [0.4, 0.6, 0.9, 0.7]) == 0.5


def test_wilcoxon_matches_scipy():
    rng = np.random.default_rng(3)
    a = rng.normal(0.7, 0.05, 12)
    b = a - rng.normal(0.02, 0.03, 12)
    assert paired(a, b)["wilcoxon_p"] == pytest.approx(wilcoxon(a, b).pvalue)
    known = paired([1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 0])  # all positive, n=6: exact two-sided p = 2/64
    assert known["wilcoxon_p"] == pytest.approx(2 / 64)


def test_all_ties_give_no_p_and_spearman():
    assert paired([0.5, 0.5], [0.5, 0.5])["wilcoxon_p"] is None
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert spearman([1, 2, 3], [5, 5, 5]) is None
