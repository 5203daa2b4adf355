"""Synthetic registration pairs: the fixed image really is the moving image warped by the returned field."""

import pytest
import torch

from diffdef.geometry import compose, warp_image
from diffdef.template import load_template
from diffdef.training.synthetic_pairs import GAIN_RANGE, field_bank, mirror, synthetic_pairs


@pytest.fixture(scope="module")
def template():
    return load_template("4mm")


@pytest.fixture(scope="module")
def bank(template):
    return field_bank(template, 3, seed=7)


def test_bank_is_deterministic_nonzero_and_varied(template, bank):
    assert bank.shape == (6, 3, *template.grid.shape) and bank.dtype == torch.float32
    torch.testing.assert_close(field_bank(template, 3, seed=7), bank)
    assert not torch.equal(field_bank(template, 3, seed=8), bank)
    peaks = bank.flatten(1).abs().amax(1)
    assert bool((peaks > 0.2).all()) and bool((peaks < 10).all())  # voxels of 4 mm: a real, plausible warp
    assert float((bank[0] - bank[1]).abs().max()) > 0.1
    for k in range(3):  # the second half holds the inverses (up to trilinear resampling: coarse on 4 mm)
        field, inverse = bank[k:k + 1], bank[3 + k:4 + k]
        for round_trip in (compose(field, inverse), compose(inverse, field)):  # zero or the field itself: >= 1
            assert float(round_trip.norm(dim=1).mean()) < 0.4 * float(field.norm(dim=1).mean())


def test_fixed_is_moving_warped_by_the_true_field_up_to_a_gain(template, bank):
    images = torch.cat([template.torch("t1"), 0.5 * template.torch("t1")])
    g = torch.Generator().manual_seed(0)
    moving, fixed, dvf = synthetic_pairs(images, bank, 8, g)
    assert moving.shape == fixed.shape == (8, 1, *template.grid.shape) and dvf.shape == (8, 3, *template.grid.shape)
    # each pair: fixed / moving = (gain_f / gain_m) * warp(raw, dvf) / raw, so warp(moving, dvf) is a constant
    # multiple of fixed inside the brain, with the ratio of two gains in GAIN_RANGE
    brain = warp_image(moving, dvf) > 0.2
    for i in range(8):
        ratio = fixed[i][brain[i]] / warp_image(moving[i:i + 1], dvf[i:i + 1])[0][brain[i]]
        assert float(ratio.std()) < 1e-4
        lo, hi = GAIN_RANGE
        assert lo / hi - 1e-6 <= float(ratio.mean()) <= hi / lo + 1e-6
    # the bank's own fields, some mirrored left-right (D flipped, its component negated)
    mirrored = mirror(bank, bank)[1]
    plain = [any(torch.equal(dvf[i], f) for f in bank) for i in range(8)]
    flipped = [any(torch.equal(dvf[i], f) for f in mirrored) for i in range(8)]
    assert all(p or f for p, f in zip(plain, flipped)) and any(plain) and any(flipped)


def test_pairs_follow_the_generator_and_check_sizes(template, bank):
    images = template.torch("t1")
    a = synthetic_pairs(images, bank, 2, torch.Generator().manual_seed(3))
    b = synthetic_pairs(images, bank, 2, torch.Generator().manual_seed(3))
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)
    with pytest.raises(ValueError, match="differ in size"):
        synthetic_pairs(images[..., :-4], bank, 2, torch.Generator())
    with pytest.raises(ValueError, match="n_fields"):
        field_bank(template, 0, seed=0)


def test_mirrored_pair_is_the_mirror_image_of_the_warp(template):
    g = torch.Generator().manual_seed(5)
    dvf = 3.0 * torch.nn.functional.avg_pool3d(torch.randn(1, 3, *template.grid.shape, generator=g), 7, 1, 3)
    dvf = dvf * (3.0 / float(dvf.abs().max()))  # up to 3 voxels, smooth
    image = template.torch("t1")
    torch.testing.assert_close(warp_image(*mirror(image, dvf)), warp_image(image, dvf).flip(2), atol=1e-5, rtol=0)
    # without negating the D displacement the identity breaks
    wrong = warp_image(image.flip(2), dvf.flip(2))
    assert float((wrong - warp_image(image, dvf).flip(2)).abs().max()) > 0.1
