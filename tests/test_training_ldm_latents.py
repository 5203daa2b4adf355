"""The diffusion model's training latents (diffdef.training.ldm.latents)."""

import pytest
import torch

from diffdef.training.ldm.latents import normalise_latents


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
