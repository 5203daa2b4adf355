"""Voxel grids of the template, written down once.

Axis convention (used everywhere in DiffDef): arrays are ``(N, C, D, H, W)`` in RAS voxel order of the
template grid, i.e. D runs Left->Right (x), H runs Posterior->Anterior (y), W runs Inferior->Superior (z).
A displacement field (DVF) is ``(N, 3, D, H, W)`` with channel ``k`` the displacement **in voxels** along
spatial axis ``k`` (D, H, W). Every output NIfTI carries the grid's affine (voxel index -> RAS mm).

This module is numpy-only so that the torch-free runtime can use it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The nilearn MNI152 2009a (symmetric) volumes are 197x233x189 at 1 mm, RAS, with this affine.
MNI152_SOURCE_SHAPE = (197, 233, 189)
MNI152_SOURCE_AFFINE = np.array(
    [[1.0, 0.0, 0.0, -98.0], [0.0, 1.0, 0.0, -134.0], [0.0, 0.0, 1.0, -72.0], [0.0, 0.0, 0.0, 1.0]]
)
# Where the paper grid (160x224x160 at 1 mm) starts inside the source volume, in source voxels.
# Chosen so the whole brain mask (x 25..171, y 26..209, z 0..156) lies inside the crop.
PAPER_CROP_START = (18, 5, 0)


@dataclass(frozen=True)
class Grid:
    """A template grid.

    Attributes:
        name: ``"paper"`` (160x224x160 @ 1 mm), ``"2mm"`` (80x112x80 @ 2 mm) or ``"4mm"`` (40x56x40 @ 4 mm,
            tests only).
        shape: (D, H, W) voxels.
        spacing_mm: isotropic voxel size in mm.
        factor: how many paper-grid voxels one voxel of this grid averages along each axis.
    """

    name: str
    shape: tuple[int, int, int]
    spacing_mm: float
    factor: int

    @property
    def affine(self) -> np.ndarray:
        """4x4 voxel-index -> RAS-mm affine (float64).

        A voxel of a coarse grid is the block average of ``factor**3`` paper-grid voxels, so its centre sits
        half a block minus half a voxel past the block's first paper voxel.
        """
        affine = MNI152_SOURCE_AFFINE.copy()
        origin = affine[:3, 3] + np.asarray(PAPER_CROP_START, dtype=np.float64)
        origin = origin + 0.5 * (self.factor - 1)
        affine[:3, :3] = np.eye(3) * self.spacing_mm
        affine[:3, 3] = origin
        return affine

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres (1 mL = 1000 mm^3)."""
        return self.spacing_mm**3 / 1000.0

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """Spatial shape after the autoencoder's 8x downsampling."""
        return tuple(s // 8 for s in self.shape)  # type: ignore[return-value]


GRIDS: dict[str, Grid] = {
    "paper": Grid("paper", (160, 224, 160), 1.0, 1),
    "2mm": Grid("2mm", (80, 112, 80), 2.0, 2),
    "4mm": Grid("4mm", (40, 56, 40), 4.0, 4),
}


def get_grid(name: str | Grid) -> Grid:
    """Return the grid called ``name`` (``paper``, ``2mm``, ``4mm``); a Grid passes through."""
    if isinstance(name, Grid):
        return name
    aliases = {"1mm": "paper"}
    key = aliases.get(name, name)
    if key not in GRIDS:
        raise ValueError(f"unknown grid {name!r}; choose one of {sorted(GRIDS)} (or '1mm' for 'paper')")
    return GRIDS[key]
