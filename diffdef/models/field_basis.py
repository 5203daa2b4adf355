"""Low-rank field basis: a second, position-aware output path of the DVF decoder (not in the paper).

``basis(z) = upsample(B_0 + sum_k a_k(z) B_k)``, with ``a(z) = W flatten(z) + b`` (a linear read-out of the whole
latent) and ``B_0 .. B_K`` (3, d', h', w') learned displacement fields on a coarse grid, upsampled trilinearly to
the decoder's output grid. All ``B`` start at zero, so the DVF decoder still starts at the identity transform.

Why: the copied AE decoder is translation-equivariant, while the atlas field depends on position (it points away
from the ventricles' centre); a linear read-out into position-aware fields learns that in a few hundred cheap steps
(figures in docs/METHOD.md, "Field basis"). No library provides such a layer; it is a linear map and a parameter.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from diffdef.models._config import ConfigBase, check_int_tuple


@dataclasses.dataclass(frozen=True)
class FieldBasisConfig(ConfigBase):
    """rank: K coefficients read from the latent (plus the constant field B_0).
    latent_channels, latent_shape: the latent (C, d, h, w) the coefficients are read from.
    basis_shape: (d', h', w') grid of the basis fields (upsampled to the decoder's output grid)."""

    rank: int = 4
    latent_channels: int = 3
    latent_shape: tuple[int, int, int] = (10, 14, 10)
    basis_shape: tuple[int, int, int] = (40, 56, 40)

    def __post_init__(self) -> None:
        self._freeze()
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank must be an int >= 1, got {self.rank!r}")
        if not isinstance(self.latent_channels, int) or self.latent_channels < 1:
            raise ValueError(f"latent_channels must be an int >= 1, got {self.latent_channels!r}")
        check_int_tuple("latent_shape", self.latent_shape, 3)
        check_int_tuple("basis_shape", self.basis_shape, 3)


class FieldBasis(nn.Module):
    """``forward(z, size) -> (N, 3, *size)`` displacement (or velocity) in output voxels, from a latent
    (N, C, d, h, w); ``size`` is the decoder's output grid (D, H, W)."""

    def __init__(self, cfg: FieldBasisConfig) -> None:
        super().__init__()
        self.config = cfg
        self.coefficients = nn.Linear(cfg.latent_channels * math.prod(cfg.latent_shape), cfg.rank)
        self.fields = nn.Parameter(torch.zeros(cfg.rank + 1, 3, *cfg.basis_shape))

    def coarse(self, z: torch.Tensor) -> torch.Tensor:
        """``B_0 + sum_k a_k(z) B_k`` on the basis grid: (N, 3, d', h', w'), in output voxels."""
        a = self.coefficients(z.flatten(1))  # (N, K)
        a = torch.cat([torch.ones_like(a[:, :1]), a], dim=1)  # (N, K + 1): B_0 always on
        return (a @ self.fields.flatten(1)).view(z.shape[0], 3, *self.config.basis_shape)

    def forward(self, z: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
        return nn.functional.interpolate(self.coarse(z), size=tuple(size), mode="trilinear", align_corners=False)
