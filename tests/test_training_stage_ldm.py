"""Stage ldm helpers: latent normalisation, the registration network's identity bias."""

import pytest
import torch

from diffdef.training.stage_ldm import identity_bias, morphology_residual, normalise_latents, registration_fields


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


class _BiasedRegistration(torch.nn.Module):
    """A fake registration network with a known answer: ``fixed - moving`` on each of 3 channels, plus a constant
    offset field ``bias`` (what it returns for an identical pair)."""

    def __init__(self, shape):
        super().__init__()
        self.bias = torch.linspace(-0.5, 0.7, 3 * int(torch.tensor(shape).prod())).view(1, 3, *shape)

    def forward(self, moving, fixed):
        return (fixed - moving).expand(-1, 3, -1, -1, -1) + self.bias


def test_registration_fields_less_the_identity_bias():
    shape = (4, 6, 4)
    reg = _BiasedRegistration(shape)
    g = torch.Generator().manual_seed(1)
    template, images = torch.rand(1, 1, *shape, generator=g), torch.rand(5, 1, *shape, generator=g)
    truth = (images - template).expand(-1, 3, -1, -1, -1)
    torch.testing.assert_close(identity_bias(reg, template), reg.bias)
    plain = registration_fields(reg, template, images, torch.device("cpu"), chunk=2)
    corrected = registration_fields(reg, template, images, torch.device("cpu"), chunk=2, bias_correction=True)
    torch.testing.assert_close(plain, truth + reg.bias)
    torch.testing.assert_close(corrected, truth)


def test_morphology_residual_is_zero_for_the_atlas_itself_only_when_corrected():
    shape = (4, 6, 4)
    reg = _BiasedRegistration(shape)
    atlas = torch.rand(1, 1, *shape, generator=torch.Generator().manual_seed(2), requires_grad=True)
    moving = torch.cat([atlas.detach(), atlas.detach() + 0.25])
    corrected = morphology_residual(reg, moving, atlas, bias_correction=True)
    torch.testing.assert_close(corrected[0], torch.zeros(3, *shape))
    torch.testing.assert_close(corrected[1], torch.full((3, *shape), -0.25))
    plain = morphology_residual(reg, moving, atlas, bias_correction=False)
    torch.testing.assert_close(plain[0], reg.bias[0])
    # differentiable in the atlas: d/d atlas of sum(fixed - moving) over the 2 neighbours and 3 channels (the
    # identity pair's own fixed - moving cancels)
    corrected.sum().backward()
    torch.testing.assert_close(atlas.grad, torch.full_like(atlas, 6.0))
