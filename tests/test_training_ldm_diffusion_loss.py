"""L_diff (diffdef.training.ldm.diffusion_loss)."""

import pytest
import torch

from diffdef.training.ldm.diffusion_loss import diffusion_loss
from diffdef_runtime.schedulers import ScheduleConfig, noise_coefficients, training_target


class _Oracle(torch.nn.Module):
    """Predicts the exact v-target from the noised latent when it is told x0 (a fixed tensor)."""

    def __init__(self, x0, schedule):
        super().__init__()
        self.x0, self.schedule, self.seen = x0, schedule, []

    def forward(self, noisy, t, conditions, mask):
        self.seen.append((t.clone(), conditions.clone(), mask.clone()))
        sqrt_ab, sqrt_1mab = (torch.as_tensor(c, dtype=noisy.dtype).view(-1, 1, 1, 1, 1)
                              for c in noise_coefficients(self.schedule, t.numpy()))
        noise = (noisy - sqrt_ab * self.x0) / sqrt_1mab
        return training_target(self.x0, noise, sqrt_ab, sqrt_1mab, self.schedule.prediction_type)


def test_an_exact_predictor_has_zero_loss_and_a_zero_one_has_the_targets_power():
    schedule = ScheduleConfig()
    latents = torch.randn(1, 3, 4, 5, 4, generator=torch.Generator().manual_seed(0)).repeat(5, 1, 1, 1, 1)
    conditions = torch.linspace(0, 1, 5)[:, None]
    oracle = _Oracle(latents[:1], schedule)
    loss = diffusion_loss(oracle, latents, conditions, schedule, 3, 0.0, torch.Generator().manual_seed(1),
                          torch.device("cpu"))
    assert float(loss) < 1e-8
    t, seen_conditions, mask = oracle.seen[0]
    assert t.shape == (3,) and seen_conditions.shape == (3, 1) and torch.equal(mask, torch.ones(3, 1))

    class Zero(torch.nn.Module):
        def forward(self, noisy, t, conditions, mask):
            return torch.zeros_like(noisy)

    g = torch.Generator().manual_seed(1)
    zero = diffusion_loss(Zero(), latents, conditions, schedule, 3, 0.0, g, torch.device("cpu"))
    assert 0.3 < float(zero) < 3.0  # the v-target of unit-variance latents and noise has about unit power


def test_same_generator_same_loss_and_dropout_masks_conditions():
    schedule = ScheduleConfig()
    latents = torch.randn(8, 3, 4, 5, 4, generator=torch.Generator().manual_seed(2))
    conditions = torch.rand(8, 2, generator=torch.Generator().manual_seed(3))
    oracle = _Oracle(torch.zeros(1, 3, 4, 5, 4), schedule)
    a = diffusion_loss(oracle, latents, conditions, schedule, 4, 1.0, torch.Generator().manual_seed(5),
                       torch.device("cpu"))
    b = diffusion_loss(oracle, latents, conditions, schedule, 4, 1.0, torch.Generator().manual_seed(5),
                       torch.device("cpu"))
    assert float(a) == pytest.approx(float(b), abs=0)
    assert torch.equal(oracle.seen[0][2], torch.zeros(4, 1))  # dropout 1: every condition dropped
