"""Geometry identities that fail if the maths or the axis convention is wrong."""

import numpy as np
import pytest
import torch
from monai.networks.blocks import Warp

from diffdef.geometry import (
    bending_energy,
    compose,
    dice,
    folding_ratio,
    integrate_svf,
    jacobian_determinant,
    jacobian_smoothness,
    mean_displacement_mm,
    svf_log,
    warp_image,
    warp_labels,
)

SHAPE = (12, 14, 16)


def _grid_coords(shape=SHAPE):
    return torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in shape], indexing="ij"))


def test_zero_field_is_identity():
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(2, 2, *SHAPE, generator=gen, dtype=torch.float64)
    zero = torch.zeros(2, 3, *SHAPE, dtype=torch.float64)
    torch.testing.assert_close(warp_image(image, zero), image)
    labels = torch.randint(0, 5, (2, 1, *SHAPE), generator=gen, dtype=torch.int64)
    assert torch.equal(warp_labels(labels, zero), labels)
    assert torch.allclose(jacobian_determinant(zero), torch.ones(2, 1, *SHAPE, dtype=torch.float64))
    assert folding_ratio(zero).tolist() == [0.0, 0.0]
    assert float(bending_energy(zero)) == 0.0
    assert mean_displacement_mm(zero, 2.0).tolist() == [0.0, 0.0]


def test_jacobian_of_affine_field_equals_its_determinant():
    a = torch.tensor([[0.2, 0.1, 0.0], [-0.05, -0.1, 0.3], [0.0, 0.15, 0.25]], dtype=torch.float64)
    coords = _grid_coords()
    u = torch.einsum("ij,jdhw->idhw", a, coords).unsqueeze(0) + 1.5  # u(x) = A x + b
    expected = torch.linalg.det(torch.eye(3, dtype=torch.float64) + a)
    det = jacobian_determinant(u)
    torch.testing.assert_close(det, torch.full_like(det, float(expected)))
    # A constant Jacobian has no spatial gradient and no curvature.
    assert float(jacobian_smoothness(u).max()) < 1e-10
    assert float(bending_energy(u)) < 1e-10


def test_planted_fold_is_counted():
    u = torch.zeros(1, 3, *SHAPE, dtype=torch.float64)
    # Along D, x + u(x) runs backwards over voxels 5..7: d u_0 / d x_0 = -2 there, so J = -1.
    for i, d in enumerate(range(4, 9)):
        u[0, 0, d] = -2.0 * i
    u[0, 0, 9:] = -8.0
    det = jacobian_determinant(u)[0, 0]
    folded = (det <= 0).sum().item()
    assert folded == 5 * SHAPE[1] * SHAPE[2]
    assert float(folding_ratio(u)[0]) == pytest.approx(folded / np.prod(SHAPE))
    mask = torch.zeros(1, 1, *SHAPE)
    mask[:, :, :6] = 1
    assert float(folding_ratio(u, mask)[0]) == pytest.approx(2 / 6)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_asymmetric_field_pins_axis_order(axis):
    """A shift of +1 voxel along spatial axis k (channel k) samples the next voxel along that axis."""
    gen = torch.Generator().manual_seed(1)
    image = torch.rand(1, 1, *SHAPE, generator=gen, dtype=torch.float64)
    u = torch.zeros(1, 3, *SHAPE, dtype=torch.float64)
    u[:, axis] = 1.0
    warped = warp_image(image, u)
    inner = [slice(None)] * 5
    inner[2 + axis] = slice(0, SHAPE[axis] - 1)
    shifted = [slice(None)] * 5
    shifted[2 + axis] = slice(1, None)
    torch.testing.assert_close(warped[tuple(inner)], image[tuple(shifted)])
    # Border padding: the last slice repeats itself.
    last = [slice(None)] * 5
    last[2 + axis] = slice(-1, None)
    torch.testing.assert_close(warped[tuple(last)], image[tuple(last)])
    # And the warp is MONAI's Warp, channel for channel.
    torch.testing.assert_close(warped, Warp(mode="bilinear", padding_mode="border")(image, u))


def test_warp_broadcasts_template_over_batch_and_labels_stay_labels():
    gen = torch.Generator().manual_seed(2)
    labels = torch.randint(0, 4, (1, 1, *SHAPE), generator=gen, dtype=torch.uint8)
    u = 0.7 * torch.randn(3, 3, *SHAPE, generator=gen)
    out = warp_labels(labels, u)
    assert out.shape == (3, 1, *SHAPE) and out.dtype == torch.uint8
    assert set(out.unique().tolist()) <= set(labels.unique().tolist())
    with pytest.raises(ValueError, match="dvf grid"):
        warp_image(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 3, 4, 4, 5))


def _smooth_field(shape, amplitude, seed):
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(1, 3, *shape, generator=gen, dtype=torch.float64)
    # Separable box filter applied 8 times per axis (close to a Gaussian of sigma ~2.3 voxels).
    for dim in (2, 3, 4):
        for _ in range(8):
            v = (v + v.roll(1, dim) + v.roll(-1, dim)) / 3
    return amplitude * v / v.abs().max()


def test_svf_integration_of_small_field_is_invertible_to_1e_3():
    """exp(v) o exp(-v) = identity. Trilinear resampling bounds the accuracy, so the field is small."""
    v = _smooth_field((24, 24, 24), amplitude=0.2, seed=3)
    round_trip = compose(integrate_svf(v, steps=7), integrate_svf(-v, steps=7))
    interior = round_trip[:, :, 3:-3, 3:-3, 3:-3].abs()
    assert float(interior.mean()) < 1e-3
    assert float(interior.max()) < 1e-2


def test_svf_integration_of_large_field_is_fold_free():
    v = _smooth_field((24, 24, 24), amplitude=1.5, seed=4)
    forward = integrate_svf(v, steps=7)
    assert float(jacobian_determinant(forward).min()) > 0
    assert float(folding_ratio(forward)[0]) == 0.0
    # The same field used directly as a displacement (no integration) is not the same map.
    assert float((forward - v).abs().max()) > 1e-2
    round_trip = compose(forward, integrate_svf(-v, steps=7))
    assert float(round_trip[:, :, 3:-3, 3:-3, 3:-3].abs().mean()) < 2e-2


def test_svf_log_inverts_the_exponential():
    v = _smooth_field((24, 24, 24), amplitude=1.5, seed=5)
    u = integrate_svf(v, steps=7)
    logged = svf_log(u, steps=7, iterations=4)
    interior = (slice(None), slice(None), slice(3, -3), slice(3, -3), slice(3, -3))
    first_order = float((u - v)[interior].abs().mean())  # v = u, the 0-iteration guess
    assert float((logged - v)[interior].abs().mean()) < 0.2 * first_order
    torch.testing.assert_close(svf_log(u, steps=7, iterations=0), u)
    with pytest.raises(ValueError, match="iterations must be >= 0"):
        svf_log(u, iterations=-1)


def test_compose_of_translations_adds_them():
    a = torch.zeros(1, 3, *SHAPE, dtype=torch.float64)
    b = torch.zeros(1, 3, *SHAPE, dtype=torch.float64)
    a[:, 0] = 1.0
    b[:, 2] = -2.0
    c = compose(a, b)
    interior = c[:, :, :-2, :, 2:]
    assert torch.allclose(interior[:, 0], torch.ones_like(interior[:, 0]))
    assert torch.allclose(interior[:, 2], torch.full_like(interior[:, 2], -2.0))


def test_mean_displacement_and_dice():
    u = torch.zeros(1, 3, *SHAPE)
    u[:, 0] = 3.0
    u[:, 1] = 4.0  # norm 5 voxels
    assert float(mean_displacement_mm(u, 2.0)[0]) == pytest.approx(10.0)
    a = torch.zeros(1, 1, *SHAPE)
    b = torch.zeros(1, 1, *SHAPE)
    a[..., :6, :, :] = 1
    b[..., 3:9, :, :] = 1
    assert float(dice(a, b)[0]) == pytest.approx(0.5)


def test_bending_energy_of_quadratic_field():
    coords = _grid_coords((16, 16, 16))
    u = torch.zeros(1, 3, 16, 16, 16, dtype=torch.float64)
    u[0, 0] = 0.01 * coords[0] ** 2  # d2u/dx2 = 0.02 everywhere, all other second derivatives 0
    be = float(bending_energy(u))
    # MONAI averages (d2u)^2 over the 3 channels (only one nonzero term); accept its exact normalisation.
    assert 0 < be <= 0.02**2
    assert be == pytest.approx(0.02**2 / 3, rel=0.05)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_geometry_on_gpu_matches_cpu():
    v = _smooth_field((24, 24, 24), amplitude=1.0, seed=5).float()
    image = torch.rand(2, 1, 24, 24, 24, generator=torch.Generator().manual_seed(6))
    cpu = (warp_image(image, integrate_svf(v)), jacobian_determinant(integrate_svf(v)))
    gpu = (warp_image(image.cuda(), integrate_svf(v.cuda())), jacobian_determinant(integrate_svf(v.cuda())))
    for a, b in zip(cpu, gpu):
        torch.testing.assert_close(a, b.cpu(), rtol=1e-4, atol=1e-4)
