"""L_diff: the denoiser's loss on noised training latents (DESIGN.md part 2)."""

from __future__ import annotations

import contextlib

import torch

from diffdef.models.denoiser import drop_conditions
from diffdef.training.data import sample_indices
from diffdef_runtime.schedulers import ScheduleConfig, add_noise, noise_coefficients, training_target


def diffusion_loss(unet: torch.nn.Module, latents: torch.Tensor, conditions: torch.Tensor, schedule: ScheduleConfig,
                   batch: int, condition_dropout: float, generator: torch.Generator, device: torch.device,
                   autocast=contextlib.nullcontext) -> torch.Tensor:
    """Mean squared error of the denoiser's prediction against the schedule's target (noise, x0 or v) for
    ``batch`` latents drawn from ``latents`` (M, C, d, h, w, on the CPU) at random timesteps, with their conditions
    ``conditions`` (M, K, on ``device``) dropped at rate ``condition_dropout`` (classifier-free guidance).
    Draws, in order: indices, noise, timesteps, the dropout mask, all from ``generator``."""
    idx = sample_indices(len(latents), batch, generator)
    x0 = latents[idx].to(device)
    noise = torch.randn(x0.shape, generator=generator).to(device)
    t = torch.randint(0, schedule.num_train_timesteps, (batch,), generator=generator)
    sqrt_ab, sqrt_1mab = (torch.as_tensor(c, dtype=x0.dtype, device=device).view(-1, 1, 1, 1, 1)
                          for c in noise_coefficients(schedule, t.numpy()))
    mask = drop_conditions(batch, condition_dropout, generator).to(device)
    with autocast():
        pred = unet(add_noise(x0, noise, sqrt_ab, sqrt_1mab), t.to(device), conditions[idx], mask)
    target = training_target(x0, noise, sqrt_ab, sqrt_1mab, schedule.prediction_type)
    return torch.nn.functional.mse_loss(pred.float(), target)
