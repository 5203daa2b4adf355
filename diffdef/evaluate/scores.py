"""Figures of one atlas: class masks (soft warp + 0.5), Dice per class, volumes, NCC/SSIM, Table-1 field figures.

Atlas class masks of a DVF method (the model, a compare model, the template = zero DVF): every class mask of the
template's label map (scheme ``diffdef``) is warped as a float map (trilinear, :func:`diffdef.geometry.warp_image`)
and thresholded at > 0.5, as :mod:`diffdef.synth.scoring` does, so sub-voxel motion counts. The atlas's
lateral-ventricle volume is the warped SOFT ventricle map (``template.ventricle_prob``) summed x voxel volume,
the same figure as the runtime's ``AtlasResult.ventricle_volume_ml``.

Table-1 field figures (over the template brain mask): folding % (``J <= 0``), mean ``|grad J|`` (norm of the
spatial gradient of the Jacobian determinant, per voxel), mean displacement in mm.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from diffdef.data.tissues import TISSUES, tissue_masks
from diffdef.geometry import dice, folding_ratio, jacobian_smoothness, mean_displacement_mm, warp_image

CLASSES = TISSUES  # lateral_ventricles, ventricles, csf, gm, wm
SSIM_KERNEL = 7
SSIM_SIGMA = 1.5


def template_class_maps(template_labels: np.ndarray, scheme: str = "diffdef") -> np.ndarray:
    """Float32 (C, D, H, W) class masks of the template labels, channels in :data:`CLASSES` order."""
    masks = tissue_masks(template_labels, scheme)
    return np.stack([masks[c] for c in CLASSES]).astype(np.float32)


def atlas_class_masks(class_maps: np.ndarray, dvf: np.ndarray) -> dict[str, np.ndarray]:
    """Class masks of the atlas of ``dvf`` (3, D, H, W) voxels: each float template map warped, > 0.5."""
    maps = torch.from_numpy(np.array(class_maps, dtype=np.float32))[None]
    field = torch.from_numpy(np.array(dvf, dtype=np.float32))[None]
    with torch.no_grad():
        warped = warp_image(maps, field)[0].numpy()
    return {c: warped[i] > 0.5 for i, c in enumerate(CLASSES)}


def soft_volume_ml(soft_map: np.ndarray, dvf: np.ndarray, voxel_volume_ml: float) -> float:
    """Volume of a soft map (D, H, W) warped by ``dvf`` (3, D, H, W): sum x voxel volume (mL)."""
    with torch.no_grad():
        warped = warp_image(torch.from_numpy(np.array(soft_map, np.float32))[None, None],
                            torch.from_numpy(np.array(dvf, np.float32))[None])
    return float(warped.sum()) * float(voxel_volume_ml)


def dice_score(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two bool masks (1.0 when both are empty), via :func:`diffdef.geometry.dice`."""
    return float(dice(torch.from_numpy(np.array(a, bool))[None, None], torch.from_numpy(np.array(b, bool))[None, None])[0])


def dice_per_class(atlas: Mapping[str, np.ndarray], subject: Mapping[str, np.ndarray],
                   classes: Sequence[str] = CLASSES) -> dict[str, float]:
    """``{class: Dice}`` between two dicts of bool masks."""
    return {c: dice_score(atlas[c], subject[c]) for c in classes}


def field_figures(dvf: np.ndarray, spacing_mm: float, mask: np.ndarray | None = None) -> dict[str, float]:
    """Table-1 figures of a DVF (3, D, H, W) in voxels: ``folding_pct``, ``grad_jac``, ``disp_mm`` (over ``mask``)."""
    field = torch.from_numpy(np.array(dvf, np.float32))[None]
    m = None if mask is None else torch.from_numpy(np.array(mask, bool))[None, None]
    with torch.no_grad():
        return {
            "folding_pct": 100.0 * float(folding_ratio(field, m)[0]),
            "grad_jac": float(jacobian_smoothness(field, m)[0]),
            "disp_mm": float(mean_displacement_mm(field, float(spacing_mm), m)[0]),
        }


def ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Global normalised cross-correlation of two images over ``mask`` (Pearson r in [-1, 1]; 0 if flat)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if mask is not None:
        a, b = a[np.asarray(mask, bool)], b[np.asarray(mask, bool)]
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def ssim(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, data_range: float | None = None) -> float:
    """Mean SSIM (MONAI ``compute_ssim_and_cs``, Gaussian window 7, sigma 1.5) over the voxels of ``mask``.

    ``data_range`` defaults to the larger image maximum minus the smaller minimum.
    """
    from monai.metrics.regression import compute_ssim_and_cs

    a32, b32 = np.array(a, np.float32), np.array(b, np.float32)
    if data_range is None:
        data_range = float(max(a32.max(), b32.max()) - min(a32.min(), b32.min())) or 1.0
    k = SSIM_KERNEL
    with torch.no_grad():
        ssim_map, _ = compute_ssim_and_cs(torch.from_numpy(a32)[None, None], torch.from_numpy(b32)[None, None],
                                          spatial_dims=3, kernel_size=[k] * 3, kernel_sigma=[SSIM_SIGMA] * 3,
                                          data_range=data_range)
    values = ssim_map[0, 0].numpy()  # "valid" convolution: the map is k - 1 voxels smaller per axis
    if mask is None:
        return float(values.mean())
    h = k // 2
    inner = np.asarray(mask, bool)[h:-h, h:-h, h:-h]
    return float(values[inner].mean()) if inner.any() else float("nan")


def mask_volume_ml(mask: np.ndarray, voxel_volume_ml: float) -> float:
    return float(np.count_nonzero(mask)) * float(voxel_volume_ml)
