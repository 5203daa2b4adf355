"""L_morph (diffdef.training.ldm.morphology)."""

import pytest
import torch
from ldm_helpers import BiasedRegistration

from diffdef.training.ldm.morphology import morphology_loss, morphology_residual


def test_morphology_residual_is_zero_for_the_atlas_itself_only_when_corrected():
    shape = (4, 6, 4)
    reg = BiasedRegistration(shape)
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


def test_morphology_loss_of_an_identity_decoder_is_the_neighbours_mean_squared_residual():
    shape = (4, 6, 4)
    reg = BiasedRegistration(shape)
    g = torch.Generator().manual_seed(4)
    template = torch.rand(1, 1, *shape, generator=g)
    neighbours = torch.cat([template, template + 0.5])

    class ZeroDecoder(torch.nn.Module):  # the identity transform: the atlas is the template
        def forward(self, z):
            return torch.zeros(1, 3, *shape) + 0 * z.sum()

    result = morphology_loss(ZeroDecoder(), reg, template, torch.ones(1, 1, 1, 1, 1), neighbours, True)
    # residuals: 0 for the template itself, -0.5 on 3 channels for the brighter one: mean over 2 of 3 * 0.25
    assert float(result.morph) == pytest.approx(0.375, rel=1e-6)
    assert float(result.bending) == 0.0 and result.dvf.shape == (1, 3, *shape)
