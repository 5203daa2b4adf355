"""The stateless learning-rate schedule of the training stages."""

import math

import pytest

from diffdef.training.lr_schedule import decayed_lr


def test_cosine_learning_rate_runs_from_base_to_a_tenth():
    assert decayed_lr(1e-3, 0, 0, 100, "cosine") == pytest.approx(1e-3)
    assert decayed_lr(1e-3, 99, 0, 100, "cosine") == pytest.approx(1e-4)
    assert decayed_lr(1e-3, 50, 0, 101, "cosine") == pytest.approx(0.55e-3)
    rates = [decayed_lr(1e-3, s, 10, 60, "cosine") for s in range(0, 70)]
    assert rates[:11] == [pytest.approx(1e-3)] * 11 and rates[59:] == [pytest.approx(1e-4)] * 11
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    assert decayed_lr(1e-3, 30, 0, 100, "constant") == 1e-3
    with pytest.raises(ValueError, match="lr_schedule"):
        decayed_lr(1e-3, 3, 0, 10, "step")
    assert math.isfinite(decayed_lr(1e-3, 0, 0, 1, "cosine"))
