"""Per-subject refinement of the registration network's template -> subject fields (instance optimisation; not in
the paper).

Each field is re-parametrised on a grid ``down`` times coarser (average-pooled from the network's field), and a few
Adam steps minimise the mean squared difference between the coarse template warped by it and the coarse subject
(the template scaled by the ratio of the two images' means, since the subjects carry a global gain) plus
``smooth_weight`` x MONAI's ``DiffusionLoss`` of the coarse field. The result is upsampled back (values x ``down``).

Why it exists, and why it is off (measured on the ``default`` preset, 2026-12-02; docs/RESULTS.md): the
neighbourhood-mean targets the DVF decoder is fitted to inherit each registration network's own systematic
errors, which differ between training seeds: seed 0's target lost CSF Dice to the plain template at 30 and 35,
seed 2's ventricle Dice at 40 and 45, seed 1's beat it everywhere. With 20 refinement steps (the other settings
at their defaults here; coarse grid 4 mm) the three seeds' targets had ventricle volumes within 0.5 mL of each
other up to age 75 (1.4 mL at 85) and all beat the template at every age on both Dice, but by only 0.000-0.002 of
CSF Dice at 30; the full ``ldm`` stage with it lost CSF Dice at 30 on seed 1's networks (0.933 vs 0.942; it
won without) and on seed 0's (0.934; 11/12 ages instead of 10/12).
Learned registration followed by per-pair optimisation is common practice (e.g. Learn2Reg challenge entries); no
library used here provides it for a batch of fixed pairs, so the loop is written out (its losses are torch's and
MONAI's).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from monai.losses import DiffusionLoss

from diffdef.geometry import warp_image
from diffdef.models.registration import downsample_dvf, upsample_dvf


@dataclasses.dataclass(frozen=True)
class RefineSettings:
    """steps: Adam steps per field (0 = no refinement). lr: Adam rate, coarse voxels per step, roughly.
    smooth_weight: weight of the diffusion regulariser against the image MSE. down: coarsening factor."""

    steps: int = 0
    lr: float = 0.05
    smooth_weight: float = 0.1
    down: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"refinement steps must be an int >= 0, got {self.steps!r}")
        if not isinstance(self.down, int) or self.down < 1:
            raise ValueError(f"refinement down must be an int >= 1, got {self.down!r}")
        if self.lr <= 0 or self.smooth_weight < 0:
            raise ValueError(f"refinement lr must be > 0 and smooth_weight >= 0, got {self.lr}, {self.smooth_weight}")


def refine_fields(template: torch.Tensor, subjects: torch.Tensor, fields: torch.Tensor,
                  settings: RefineSettings) -> torch.Tensor:
    """Refine ``warp_image(template, fields[i]) ~ subjects[i]`` for every i.

    Args:
        template: (1, 1, D, H, W) the moving image. subjects: (N, 1, D, H, W) the fixed images.
        fields: (N, 3, D, H, W) initial displacements (the network's), voxels of the image grid.
        settings: :class:`RefineSettings`; ``steps = 0`` returns ``fields`` unchanged.
    Returns:
        (N, 3, D, H, W) refined displacements, voxels of the image grid (piecewise trilinear on the coarse grid).
    Raises:
        ValueError: a spatial size not divisible by ``settings.down``, or mismatched shapes.
    """
    if settings.steps == 0:
        return fields
    if (subjects.shape[0] != fields.shape[0] or subjects.shape[2:] != fields.shape[2:]
            or template.shape[2:] != fields.shape[2:]):
        raise ValueError(f"subjects {tuple(subjects.shape)}, fields {tuple(fields.shape)} and template "
                         f"{tuple(template.shape)} do not match")
    down = settings.down
    if any(n % down for n in fields.shape[2:]):
        raise ValueError(f"refinement down {down} must divide the grid {tuple(fields.shape[2:])}")
    coarse_template, coarse_subjects = F.avg_pool3d(template, down), F.avg_pool3d(subjects, down)
    smooth = DiffusionLoss()
    with torch.enable_grad():
        # a copy (with down = 1 the pooling returns its input): Adam updates it in place
        coarse = downsample_dvf(fields.detach(), down).clone().requires_grad_(True)
        optimiser = torch.optim.Adam([coarse], lr=settings.lr)
        moving = coarse_template.expand(len(coarse), -1, -1, -1, -1)
        for _ in range(settings.steps):
            warped = warp_image(moving, coarse)
            with torch.no_grad():  # per-subject global gain, so the loss does not pull on intensity scale
                gain = coarse_subjects.flatten(1).mean(1) / warped.flatten(1).mean(1).clamp_min(1e-8)
            similarity = (warped * gain.view(-1, 1, 1, 1, 1) - coarse_subjects).pow(2).mean()
            loss = similarity + settings.smooth_weight * smooth(coarse)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    return upsample_dvf(coarse.detach(), down)
