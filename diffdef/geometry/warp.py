"""Warping images and label maps with a displacement field (DVF).

Convention (docs/ARCHITECTURE.md): ``warped(x) = image(x + u(x))`` with ``u`` in voxels along (D, H, W),
border padding. This is exactly MONAI's ``Warp`` (checked by tests/test_geometry.py), which we wrap so the
batch broadcasting and the label path are written once.
"""

from __future__ import annotations

import warnings

import torch
from monai.networks.blocks import Warp

with warnings.catch_warnings():
    # MONAI warns that it uses PyTorch's grid_sample (not its compiled extension): that is what we want.
    warnings.filterwarnings("ignore", message=".*native grid_sample", category=UserWarning)
    _LINEAR = Warp(mode="bilinear", padding_mode="border")  # "bilinear" is trilinear for 3-D input
    _NEAREST = Warp(mode="nearest", padding_mode="border")


def _broadcast(image: torch.Tensor, dvf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if image.ndim != 5 or dvf.ndim != 5 or dvf.shape[1] != 3:
        raise ValueError(f"expected image (N, C, D, H, W) and dvf (N, 3, D, H, W); got {tuple(image.shape)} and {tuple(dvf.shape)}")
    if image.shape[2:] != dvf.shape[2:]:
        raise ValueError(f"image grid {tuple(image.shape[2:])} differs from dvf grid {tuple(dvf.shape[2:])}")
    n = max(image.shape[0], dvf.shape[0])
    if image.shape[0] not in (1, n) or dvf.shape[0] not in (1, n):
        raise ValueError(f"batch sizes {image.shape[0]} and {dvf.shape[0]} cannot be broadcast")
    return image.expand(n, *image.shape[1:]), dvf.expand(n, *dvf.shape[1:])


def warp_image(image: torch.Tensor, dvf: torch.Tensor) -> torch.Tensor:
    """Trilinear warp with border padding.

    Args:
        image: (N, C, D, H, W) float; N may be 1 and broadcast against the DVF batch.
        dvf: (N, 3, D, H, W), displacement in voxels.
    Returns:
        (N, C, D, H, W), ``image(x + dvf(x))``.
    """
    image, dvf = _broadcast(image, dvf)
    return _LINEAR(image.to(dvf.dtype), dvf)


def warp_labels(labels: torch.Tensor, dvf: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour warp of an integer label map (border padding); returns the input's dtype.

    Args:
        labels: (N, 1, D, H, W) integer labels.
        dvf: (N, 3, D, H, W), voxels.
    """
    labels_b, dvf = _broadcast(labels, dvf)
    warped = _NEAREST(labels_b.to(dvf.dtype), dvf)
    return torch.round(warped).to(labels.dtype)
