"""L_morph: how far the neighbourhood's subjects are from a generated atlas (DESIGN.md part 3, the paper's joint
phase)."""

from __future__ import annotations

import dataclasses

import torch

from diffdef.geometry import bending_energy, warp_image
from diffdef.training.ldm.field_targets import identity_bias


def morphology_residual(reg: torch.nn.Module, moving: torch.Tensor, atlas: torch.Tensor,
                        bias_correction: bool) -> torch.Tensor:
    """The L_morph residual: the neighbours ``moving`` (N, 1, D, H, W) registered to the generated ``atlas``
    (1, 1, D, H, W), (N, 3, D, H, W) voxels, less :func:`identity_bias` of the atlas with ``bias_correction``;
    differentiable in ``atlas``."""
    residual = reg(moving, atlas.expand(len(moving), -1, -1, -1, -1))
    return residual - identity_bias(reg, atlas) if bias_correction else residual


@dataclasses.dataclass
class MorphologyLoss:
    morph: torch.Tensor  # mean squared displacement of the neighbours to the atlas, voxels^2
    bending: torch.Tensor  # bending energy of the DVF
    dvf: torch.Tensor  # (1, 3, D, H, W) voxels


def morphology_loss(decoder: torch.nn.Module, reg: torch.nn.Module, template: torch.Tensor, latent: torch.Tensor,
                    neighbours: torch.Tensor, bias_correction: bool) -> MorphologyLoss:
    """Decode ``latent`` (1, C, d, h, w, as the decoder reads it) to a DVF, warp ``template`` (1, 1, D, H, W) into
    an atlas, and register the ``neighbours`` (N, 1, D, H, W) to it (:func:`morphology_residual`)."""
    dvf = decoder(latent)
    atlas = warp_image(template, dvf)
    residual = morphology_residual(reg, neighbours, atlas, bias_correction)
    return MorphologyLoss(residual.pow(2).sum(1).mean(), bending_energy(dvf), dvf)
