"""The diffusion model's training latents: the autoencoder's posterior means, centred and scaled."""

from __future__ import annotations

from typing import NamedTuple

import torch


@torch.no_grad()
def encode_latents(ae: torch.nn.Module, images: torch.Tensor, device: torch.device, chunk: int = 4) -> torch.Tensor:
    """Posterior means of the autoencoder for every training image (M, 1, D, H, W): (M, C, d, h, w) on the CPU."""
    ae.eval()
    out = [ae.encode(images[i:i + chunk].to(device))[0].cpu() for i in range(0, len(images), chunk)]
    return torch.cat(out)


class NormalisedLatents(NamedTuple):
    values: torch.Tensor  # (M, C, d, h, w): what the diffusion model learns
    mean: torch.Tensor | None  # (1, C, d, h, w) population mean subtracted first, or None
    scale: float  # values = (latents - mean) * scale


def normalise_latents(latents: torch.Tensor, centre: bool, scale: float | None) -> NormalisedLatents:
    """The diffusion model's training latents from the autoencoder's (M, C, d, h, w).

    ``centre``: subtract the population-mean latent (per voxel and channel) first: without it the shared template
    dominates every latent and the between-subject signal is a few percent of it. ``scale``: multiply by this;
    None = 1 / std of the (centred) latents, so they have unit variance.
    """
    mean = latents.mean(0, keepdim=True) if centre else None
    centred = latents - mean if centre else latents
    scale = float(scale or 1.0 / centred.std().item())
    return NormalisedLatents(centred * scale, mean, scale)
