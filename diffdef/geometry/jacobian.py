"""Jacobian determinant of a displacement field and the measures built on it.

``J(x) = det(I + grad u(x))`` with ``u`` in voxels and derivatives per voxel (central differences,
one-sided at the border: ``torch.gradient``). Because both are in voxel units, J is the local volume
ratio for any isotropic spacing. Written by hand: MONAI has no Jacobian-determinant transform for DVFs.
"""

from __future__ import annotations

import torch


def jacobian_matrix(dvf: torch.Tensor) -> torch.Tensor:
    """Deformation gradient ``I + grad u``.

    Args:
        dvf: (N, 3, D, H, W), voxels.
    Returns:
        (N, 3, 3, D, H, W); entry ``[:, i, j]`` is ``delta_ij + d u_i / d x_j``.
    """
    if dvf.ndim != 5 or dvf.shape[1] != 3:
        raise ValueError(f"dvf must be (N, 3, D, H, W); got {tuple(dvf.shape)}")
    rows = []
    for i in range(3):
        grads = torch.gradient(dvf[:, i], dim=(1, 2, 3))  # d u_i / d (D, H, W)
        rows.append(torch.stack(grads, dim=1))
    jac = torch.stack(rows, dim=1)
    eye = torch.eye(3, dtype=dvf.dtype, device=dvf.device).view(1, 3, 3, 1, 1, 1)
    return jac + eye


def jacobian_determinant(dvf: torch.Tensor) -> torch.Tensor:
    """Jacobian determinant map.

    Args:
        dvf: (N, 3, D, H, W), voxels.
    Returns:
        (N, 1, D, H, W); 1 = volume preserved, >1 expansion, <=1... folding at <= 0.
    """
    m = jacobian_matrix(dvf)
    det = (
        m[:, 0, 0] * (m[:, 1, 1] * m[:, 2, 2] - m[:, 1, 2] * m[:, 2, 1])
        - m[:, 0, 1] * (m[:, 1, 0] * m[:, 2, 2] - m[:, 1, 2] * m[:, 2, 0])
        + m[:, 0, 2] * (m[:, 1, 0] * m[:, 2, 1] - m[:, 1, 1] * m[:, 2, 0])
    )
    return det.unsqueeze(1)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over (C, D, H, W) per batch item; ``mask`` (N or 1, 1, D, H, W) selects voxels."""
    if mask is None:
        return values.flatten(1).mean(1)
    weights = mask.to(values.dtype).expand_as(values)
    return (values * weights).flatten(1).sum(1) / weights.flatten(1).sum(1).clamp_min(1.0)


def folding_ratio(dvf: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Fraction of voxels with ``J <= 0`` (folded), per batch item: (N,). Optional (.., 1, D, H, W) mask."""
    return _masked_mean((jacobian_determinant(dvf) <= 0).to(dvf.dtype), mask)


def jacobian_smoothness(dvf: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean magnitude of the gradient of the Jacobian determinant, ``mean |grad J|`` per voxel: (N,)."""
    det = jacobian_determinant(dvf)[:, 0]
    grads = torch.gradient(det, dim=(1, 2, 3))
    magnitude = torch.sqrt(sum(g * g for g in grads)).unsqueeze(1)
    return _masked_mean(magnitude, mask)
