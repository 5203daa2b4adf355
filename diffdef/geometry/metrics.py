"""Scalar measures of a deformation and of label overlap."""

from __future__ import annotations

import warnings

import torch
from monai.losses import BendingEnergyLoss

from diffdef.geometry.jacobian import _masked_mean


def mean_displacement_mm(dvf: torch.Tensor, spacing_mm: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean Euclidean displacement norm in mm per batch item: (N,).

    Args:
        dvf: (N, 3, D, H, W), voxels; spacing_mm: isotropic voxel size.
    """
    norm = torch.linalg.vector_norm(dvf, dim=1, keepdim=True) * spacing_mm
    return _masked_mean(norm, mask)


_BENDING = BendingEnergyLoss(normalize=False, reduction="mean")


def bending_energy(dvf: torch.Tensor) -> torch.Tensor:
    """Bending energy (mean of squared second derivatives, voxel units), MONAI ``BendingEnergyLoss``: scalar."""
    with warnings.catch_warnings():
        # MONAI 1.6 indexes with lists, which torch flags as deprecated on every call; the result is right.
        warnings.filterwarnings("ignore", message="Using a non-tuple sequence", category=UserWarning)
        return _BENDING(dvf)


def dice(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Dice overlap of two binary masks per batch item: (N,). Inputs (N, 1, D, H, W), any dtype (nonzero = in)."""
    a = (a != 0).flatten(1).float()
    b = (b != 0).flatten(1).float()
    inter = (a * b).sum(1)
    total = a.sum(1) + b.sum(1)
    return torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total))
