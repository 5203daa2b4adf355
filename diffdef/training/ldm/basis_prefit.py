"""Pre-fit of the DVF decoder's field basis: thousands of cheap steps before the decoder warm-up (not in the paper).

Why: the basis alone costs milliseconds per batched step on its coarse grid, so it can be fitted closely to the
exact neighbourhood-mean targets where a full decoder step could not; with ``ldm.basis_prefit_samples`` it also
sees latents drawn by the UNet, which is what it reads at generation (figures in docs/METHOD.md, "Basis pre-fit"
and "Latents drawn by the UNet").

With a diffeomorphic decoder the basis holds a velocity: the targets become velocities by
:func:`diffdef.geometry.svf.svf_log` on the basis grid (4 fixed-point iterations: 0.04 voxel RMS from the
target displacement at age 80 on the default grid, 0.0 at 25), so the fit needs no integration in its loop.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from diffdef.geometry import svf_log
from diffdef.models.field_basis import FieldBasis

log = logging.getLogger(__name__)


def basis_grid_targets(bank: torch.Tensor, weights: torch.Tensor, basis_shape: tuple[int, int, int],
                       velocity_steps: int = 0) -> torch.Tensor:
    """Per-subject regression targets of the basis on its own grid.

    Args:
        bank: (M, 3, D, H, W) registration fields (voxels of the image grid) of the M training subjects.
        weights: (S, M) rows summing to 1: target s is ``sum_m weights[s, m] bank[m]`` (a neighbourhood mean).
        basis_shape: (d', h', w') of the basis grid.
        velocity_steps: > 0: return the stationary velocity whose ``velocity_steps``-squaring exponential is that
            displacement (on the basis grid), as a diffeomorphic decoder needs; 0: the displacement.
    Returns:
        (S, 3, d', h', w') in voxels of the image grid (the unit of the basis fields).
    """
    if bank.shape[0] != weights.shape[1]:
        raise ValueError(f"weights {tuple(weights.shape)} do not match a bank of {bank.shape[0]} fields")
    factor = torch.tensor(bank.shape[2:], dtype=torch.float32) / torch.tensor(basis_shape, dtype=torch.float32)
    per_axis = factor.view(1, 3, 1, 1, 1)  # image voxels per basis voxel, along (D, H, W)
    with torch.no_grad():
        pooled = F.adaptive_avg_pool3d(bank, tuple(basis_shape))  # image voxels
        targets = torch.einsum("sm,mcdhw->scdhw", weights.to(pooled.dtype), pooled)
        if velocity_steps > 0:
            targets = svf_log(targets / per_axis, velocity_steps) * per_axis
    return targets


def prefit_field_basis(basis: FieldBasis, latents: torch.Tensor, targets: torch.Tensor, steps: int, batch: int,
                       lr_fields: float, lr_coefficients: float, generator: torch.Generator) -> float:
    """Fit ``basis.coarse(latents[j]) ~ targets[j mod M]`` by Adam on random batches (mean squared end-point
    error).

    Args:
        latents: (L, C, d, h, w) the decoder's inputs (as the decoder sees them), L a multiple of M: row j belongs
            to subject j mod M (the encoded latents, then K drawn ones per subject, share targets without copies).
        targets: (M, 3, d', h', w') from :func:`basis_grid_targets`.
        steps, batch: Adam steps and latents per step (drawn with replacement).
        lr_fields, lr_coefficients: Adam rates of the basis fields and of the coefficient read-out.
        generator: the only source of randomness (same seed, same fit).
    Returns:
        the final mean squared error over all M subjects, voxels^2.
    """
    if len(targets) == 0 or latents.shape[0] % targets.shape[0]:
        raise ValueError(f"{latents.shape[0]} latents is not a multiple of {targets.shape[0]} targets")
    device = basis.fields.device
    optimiser = torch.optim.Adam([{"params": [basis.fields], "lr": lr_fields},
                                  {"params": basis.coefficients.parameters(), "lr": lr_coefficients}])
    for _ in range(int(steps)):
        idx = torch.randint(0, len(latents), (int(batch),), generator=generator)
        loss = (basis.coarse(latents[idx].to(device)) - targets[idx % len(targets)].to(device)).pow(2).sum(1).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    optimiser.zero_grad(set_to_none=True)  # leave no gradient behind for the stage's own optimiser
    error = 0.0
    with torch.no_grad():
        for k in range(0, len(latents), 16):
            rows = torch.arange(k, min(k + 16, len(latents)))
            residual = basis.coarse(latents[rows].to(device)) - targets[rows % len(targets)].to(device)
            error += float(residual.pow(2).sum(1).mean()) * len(rows)
    return error / len(latents)
