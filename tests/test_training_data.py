"""Neighbourhoods of a target condition (the subjects L_morph and the decoder warm-up draw)."""

import math

import pytest
import torch

from diffdef.training.data import draw_neighbours, neighbour_weights, sample_indices


def _ages() -> torch.Tensor:
    """(6, 1) normalised ages: three young subjects, three old ones."""
    return torch.tensor([[0.10], [0.12], [0.14], [0.80], [0.82], [0.84]])


def test_weights_are_gaussian_in_the_condition_distance():
    conditions = _ages()
    w = neighbour_weights(conditions, torch.tensor([0.12]), sigma=0.05)
    assert w.shape == (6,) and float(w.sum()) == pytest.approx(1.0)
    # exp(-d^2 / 2 sigma^2): the two subjects 0.02 away weigh exp(-0.08) of the one at the target
    assert float(w[0] / w[1]) == pytest.approx(math.exp(-0.02**2 / (2 * 0.05**2)), rel=1e-5)
    assert float(w[0]) == pytest.approx(float(w[2]), rel=1e-5)
    assert float(w[3:].sum()) < 1e-30  # 0.68 away: 13.6 sigma


def test_draws_stay_in_the_neighbourhood_and_follow_the_weights():
    conditions = _ages()
    target = torch.tensor([0.81])
    g = torch.Generator().manual_seed(0)
    idx = draw_neighbours(conditions, target, 0.05, 4000, g)
    assert idx.shape == (4000,) and idx.dtype == torch.int64
    assert int(idx.min()) >= 3  # never a young subject for an old target
    counts = torch.bincount(idx, minlength=6).double() / len(idx)
    torch.testing.assert_close(counts, neighbour_weights(conditions, target, 0.05).double(), atol=0.03, rtol=0)


def test_draws_are_reproducible_from_the_generator():
    conditions = _ages()
    a = draw_neighbours(conditions, torch.tensor([0.5]), 0.3, 16, torch.Generator().manual_seed(3))
    b = draw_neighbours(conditions, torch.tensor([0.5]), 0.3, 16, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and len(set(a.tolist())) > 1


def test_sample_indices_are_in_range():
    idx = sample_indices(5, 1000, torch.Generator().manual_seed(0))
    assert idx.shape == (1000,) and int(idx.min()) == 0 and int(idx.max()) == 4
