"""Pre-fit of the DVF decoder's field basis: targets on the basis grid, a fit that recovers a known basis."""

import pytest
import torch

from diffdef.geometry import integrate_svf
from diffdef.models.field_basis import FieldBasis, FieldBasisConfig
from diffdef.training.ldm.basis_prefit import basis_grid_targets, prefit_field_basis


def _smooth_fields(n, shape, generator, scale):
    coarse = torch.randn(n, 3, *(max(1, s // 4) for s in shape), generator=generator)
    return scale * torch.nn.functional.interpolate(coarse, size=shape, mode="trilinear", align_corners=False)


def test_targets_are_weighted_means_pooled_to_the_basis_grid():
    g = torch.Generator().manual_seed(0)
    bank = _smooth_fields(3, (8, 12, 8), g, 1.0)
    weights = torch.tensor([[1.0, 0.0, 0.0], [0.25, 0.25, 0.5]])
    targets = basis_grid_targets(bank, weights, (4, 6, 4))
    assert targets.shape == (2, 3, 4, 6, 4)
    pooled = torch.nn.functional.avg_pool3d(bank, 2)  # values stay in image voxels
    torch.testing.assert_close(targets[0], pooled[0])
    torch.testing.assert_close(targets[1], 0.25 * pooled[0] + 0.25 * pooled[1] + 0.5 * pooled[2])
    with pytest.raises(ValueError, match="do not match a bank of 3"):
        basis_grid_targets(bank, weights[:, :2], (4, 6, 4))


def test_velocity_targets_integrate_back_to_the_displacement():
    g = torch.Generator().manual_seed(1)
    bank = _smooth_fields(2, (16, 16, 16), g, 0.8)  # image voxels; the basis grid is 2x coarser
    weights = torch.eye(2)
    displacement = basis_grid_targets(bank, weights, (8, 8, 8))
    velocity = basis_grid_targets(bank, weights, (8, 8, 8), velocity_steps=7)
    # exp on the basis grid, in its own voxels (image voxels / 2), back to image voxels
    integrated = integrate_svf(velocity / 2, 7) * 2
    first_order = integrate_svf(displacement / 2, 7) * 2
    def rms(field):
        return float(field.pow(2).sum(1).mean().sqrt())

    error = rms(integrated - displacement)
    assert error < 0.25 * rms(first_order - displacement)  # the log beats v = u by far
    assert rms(velocity - displacement) > 3 * error  # and differs from u: a real correction


def _random_field_model(g: torch.Generator):
    """A random rank-2 basis (the truth), 40 latents and their exact targets: (config, latents, targets)."""
    cfg = FieldBasisConfig(rank=2, latent_channels=2, latent_shape=(2, 3, 2), basis_shape=(4, 6, 4))
    truth = FieldBasis(cfg)
    with torch.no_grad():
        truth.fields.copy_(torch.randn(truth.fields.shape, generator=g))
        truth.coefficients.weight.copy_(0.3 * torch.randn(truth.coefficients.weight.shape, generator=g))
    latents = torch.randn(40, 2, 2, 3, 2, generator=g)
    with torch.no_grad():
        return cfg, latents, truth.coarse(latents)


def test_prefit_recovers_a_field_model_of_the_latent():
    cfg, latents, targets = _random_field_model(torch.Generator().manual_seed(2))
    start = float(targets.pow(2).sum(1).mean())  # the error of a fresh (all-zero) basis
    fits = []
    for _ in range(2):
        torch.manual_seed(3)  # the read-out's initial weights
        basis = FieldBasis(cfg)
        error = prefit_field_basis(basis, latents, targets, steps=400, batch=8, lr_fields=3e-2, lr_coefficients=3e-2,
                                   generator=torch.Generator().manual_seed(5))
        fits.append(basis.fields.detach().clone())
    assert error < 0.02 * start
    assert all(p.grad is None for p in basis.parameters())  # nothing left for the stage's optimiser
    torch.testing.assert_close(fits[0], fits[1])  # same seed, same fit
    with pytest.raises(ValueError, match="40 latents is not a multiple of 39 targets"):
        prefit_field_basis(FieldBasis(cfg), latents, targets[:39], 1, 1, 1e-2, 1e-2, torch.Generator())


def test_prefit_pairs_latent_row_j_with_target_j_mod_m():
    # Two latents per subject (the second a small perturbation, as a drawn latent of the same condition) share
    # one target row each: the fit must pair row j with target j mod M. Pairing them any other way (j // 2, or a
    # shuffled half) asks one linear model for two unrelated fields per latent and cannot get near the truth.
    g = torch.Generator().manual_seed(4)
    cfg, latents, targets = _random_field_model(g)  # targets (40, ...): one per subject
    inputs = torch.cat([latents, latents + 0.01 * torch.randn(latents.shape, generator=g)])  # (80, ...)
    torch.manual_seed(3)
    basis = FieldBasis(cfg)
    error = prefit_field_basis(basis, inputs, targets, steps=400, batch=8, lr_fields=3e-2, lr_coefficients=3e-2,
                               generator=torch.Generator().manual_seed(5))
    assert error < 0.02 * float(targets.pow(2).sum(1).mean())
    with torch.no_grad():  # and the second copy is read like the first
        second = basis.coarse(inputs[40:])
    assert float((second - targets).pow(2).sum(1).mean()) < 0.02 * float(targets.pow(2).sum(1).mean())
