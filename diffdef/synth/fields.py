"""Small field utilities shared by the ageing model and the synthetic cohort.

Smoothing is done with ``scipy.ndimage`` (single-threaded, bit-for-bit reproducible); warping and
integration use :mod:`diffdef.geometry`. All displacement/velocity fields are (N, 3, D, H, W) in voxels of
the grid they live on.
"""

from __future__ import annotations

import logging
import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from diffdef_runtime import atomic
from diffdef_runtime.grid import Grid

log = logging.getLogger(__name__)


def gaussian(arr: np.ndarray, sigma_vox: float) -> np.ndarray:
    """Gaussian smoothing of a (D, H, W) array (float64 result), ``sigma_vox`` in voxels, edge-replicating."""
    return ndi.gaussian_filter(np.asarray(arr, dtype=np.float64), sigma_vox, mode="nearest", truncate=3.0)


def gradient_field(potential: np.ndarray, scale: float = 1.0) -> torch.Tensor:
    """``scale * grad(potential)`` (central differences, per voxel) as a (1, 3, D, H, W) float32 tensor."""
    grads = np.stack(np.gradient(potential), axis=0) * scale
    return torch.from_numpy(grads.astype(np.float32))[None]


def squaring_steps(velocity: torch.Tensor, max_step_vox: float = 0.25, minimum: int = 7) -> int:
    """Scaling-and-squaring steps so that the first scaled step moves at most ``max_step_vox`` voxels."""
    vmax = float(velocity.abs().amax()) * math.sqrt(3.0)  # cheap upper bound of the largest vector norm
    if vmax <= 0:
        return minimum
    return max(minimum, math.ceil(math.log2(vmax / max_step_vox)))


def resample_dvf(dvf: torch.Tensor, source: Grid, target: Grid) -> torch.Tensor:
    """Trilinear resampling of a DVF from a coarser grid to a finer one (voxels rescaled).

    Grids are nested block grids (``target.factor`` divides ``source.factor``), so ``align_corners=False``
    puts every voxel centre where it belongs. (1, 3, d, h, w) on ``source`` -> (1, 3, D, H, W) on ``target``.
    """
    if source == target:
        return dvf
    ratio = source.spacing_mm / target.spacing_mm
    if ratio < 1 or abs(ratio - round(ratio)) > 1e-9:
        raise ValueError(f"can only upsample by an integer factor: {source.name} -> {target.name}")
    out = F.interpolate(dvf, size=target.shape, mode="trilinear", align_corners=False)
    return out * float(ratio)


def resample_map(image: torch.Tensor, source: Grid, target: Grid) -> torch.Tensor:
    """Trilinear upsampling of a (N, C, d, h, w) scalar map from ``source`` to the finer ``target`` grid."""
    if source == target:
        return image
    return F.interpolate(image, size=target.shape, mode="trilinear", align_corners=False)


def soft_volume_ml(prob: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Soft volume per batch item, mL: (N, 1, D, H, W) probabilities -> (N,)."""
    return prob.flatten(1).sum(1, dtype=torch.float64) * grid.voxel_volume_ml


# --------------------------------------------------------------------------- on-disk cache (optional)
def cache_dir() -> str | None:
    """``$DIFFDEF_CACHE_DIR`` or ``~/.cache/diffdef``; None when ``DIFFDEF_NO_CACHE`` is set."""
    if os.environ.get("DIFFDEF_NO_CACHE"):
        return None
    return os.environ.get("DIFFDEF_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "diffdef")


def cache_load(name: str) -> dict[str, np.ndarray] | None:
    """Arrays stored under ``name`` (an .npz file name), or None (missing, unreadable, or caching off)."""
    folder = cache_dir()
    if folder is None:
        return None
    path = os.path.join(folder, name)
    try:
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        return None
    except Exception as exc:  # a corrupt cache file is recomputed, never fatal
        log.warning("ignoring unreadable cache file %s: %s", path, exc)
        return None


def cache_save(name: str, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` atomically (temporary file + ``os.replace``); failures only log."""
    folder = cache_dir()
    if folder is None:
        return
    try:
        with atomic.atomic_path(os.path.join(folder, name)) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
    except OSError as exc:
        log.warning("could not write cache %s: %s", name, exc)
