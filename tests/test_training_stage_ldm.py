"""Stage ldm helpers: latent normalisation and the stateless learning-rate schedule."""

import math

import pytest
import torch

from diffdef.training.stage_ldm import decayed_lr, normalise_latents


def _latents():
    g = torch.Generator().manual_seed(0)
    shared = 3.0 * torch.randn(1, 3, 4, 5, 4, generator=g)  # the template: dominates every latent
    return shared + 0.1 * torch.randn(20, 3, 4, 5, 4, generator=g)


def test_centred_latents_have_zero_mean_and_unit_std():
    raw = _latents()
    z, mean, scale = normalise_latents(raw, centre=True, scale=None)
    assert mean.shape == (1, 3, 4, 5, 4)
    assert float(z.mean(0).abs().max()) < 1e-4  # every voxel centred (z has unit std)
    assert z.std().item() == pytest.approx(1.0, rel=1e-4)
    assert 1 / scale == pytest.approx(0.1, rel=0.1)  # the between-subject spread, not the template's
    torch.testing.assert_close(z / scale + mean, raw)  # what the DVF decoder undoes


def test_uncentred_latents_keep_the_template():
    raw = _latents()
    z, mean, scale = normalise_latents(raw, centre=False, scale=None)
    assert mean is None and z.std().item() == pytest.approx(1.0, rel=1e-4) and 1 / scale > 2.0
    z, _, scale = normalise_latents(raw, centre=False, scale=0.3)  # the paper's fixed scale
    assert scale == 0.3
    torch.testing.assert_close(z, raw * 0.3)


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
