"""How close an atlas DVF comes to the synthetic cohort's true atlas of an age (ventricle and CSF Dice).

The template's soft ventricle and CSF maps (CSF includes the ventricles) are warped with the atlas DVF and with
the true ageing deformation, thresholded at 0.5 and compared; the plain template is scored the same way, so a
useful atlas has Dice above the template's. Soft maps are warped rather than the label map because a
nearest-neighbour label warp ignores sub-voxel motion, which would make the template look perfect at young ages
on the 2 mm grid.
"""

from __future__ import annotations

import torch

from diffdef.geometry import dice, warp_image
from diffdef.synth.ageing import AgeingModel
from diffdef.synth.fields import soft_volume_ml


def score_atlas(ageing: AgeingModel, age: float, dvf: torch.Tensor) -> dict[str, float]:
    """Scores of one atlas DVF (1, 3, D, H, W), voxels of the ageing model's template grid, against the true
    atlas of ``age`` (years).

    Returns:
        ``volume_ml`` / ``true_volume_ml`` (ventricles of the atlas / of the true atlas), ``dice_vent``,
        ``template_dice_vent``, ``dice_csf``, ``template_dice_csf`` (Dice in [0, 1]).
    """
    template = ageing.template
    soft = torch.cat([template.torch("ventricle_prob"), template.torch("csf")], dim=1)  # (1, 2, D, H, W)
    if tuple(dvf.shape) != (1, 3, *soft.shape[2:]):
        raise ValueError(f"atlas DVF must be (1, 3, {', '.join(map(str, soft.shape[2:]))}), got {tuple(dvf.shape)}")
    truth = ageing.ground_truth_atlas(age)
    warped = warp_image(soft, dvf)
    # the template goes through the same warp (zero field), so float rounding at the 0.5 threshold cannot make
    # an atlas with u = 0 score differently from the template
    atlas, true = warped > 0.5, warp_image(soft, truth.dvf) > 0.5
    plain = warp_image(soft, torch.zeros_like(dvf)) > 0.5
    return {
        "volume_ml": float(soft_volume_ml(warped[:, :1], template.grid)),
        "true_volume_ml": truth.ventricle_volume_ml,
        "dice_vent": float(dice(atlas[:, :1], true[:, :1])[0]),
        "template_dice_vent": float(dice(plain[:, :1], true[:, :1])[0]),
        "dice_csf": float(dice(atlas[:, 1:], true[:, 1:])[0]),
        "template_dice_csf": float(dice(plain[:, 1:], true[:, 1:])[0]),
    }


def wins_over_template(rows: list[dict[str, float]]) -> tuple[int, int]:
    """How many scored atlases (rows of :func:`score_atlas`) beat the plain template: ``(on ventricle Dice,
    on CSF Dice)``; a tie is not a win."""
    vent = sum(r["dice_vent"] > r["template_dice_vent"] for r in rows)
    csf = sum(r["dice_csf"] > r["template_dice_csf"] for r in rows)
    return vent, csf
