"""Registration pairs with a known deformation: supervision for the registration network.

Why this exists: trained on image similarity alone, the registration network of the ``default`` budget
(a few hundred steps on a CPU) does not register - its end-point error on held-out subjects stayed at the
zero field's (measured with ``benchmarks/registration_accuracy.py``; docs/RESULTS.md), so L_morph had no
signal to give the DVF decoder. A training image warped by a known smooth field is a pair whose true DVF is
known exactly, and the end-point error on it is a far stronger signal per step than similarity (the idea of
SynthMorph, Hoffmann et al., IEEE TMI 2022, which trains on synthetic pairs only). No library draws
brain-ageing-like fields, so the bank below is built from this package's own ageing model.

The fields are those of the synthetic cohort's family - the ageing field of a random age and ventricle offset
composed (in random order) with a random individual field - drawn in template space, together with their
inverses, and each pair is mirrored left-right with probability 1/2. The inverses matter: the ageing fields
mostly enlarge the ventricles, while L_morph asks the network to register old subjects onto younger-looking
atlases; trained on enlarging fields only, the network's L_morph was smallest at the plain template for every
target age (measured: docs/METHOD.md). They fit real, template-aligned (manifest) images too: only the images change.
"""

from __future__ import annotations

import numpy as np
import torch

from diffdef.geometry import compose, warp_image
from diffdef.synth.ageing import AGE_RANGE, AgeingModel
from diffdef.synth.cohort import GAIN_RANGE, VENTRICLE_LOG_SD, individual_dvf
from diffdef.synth.fields import resample_dvf
from diffdef.template import Template


def field_bank(template: Template, n_fields: int, seed: int) -> torch.Tensor:
    """``n_fields`` random deformations and their inverses (2n, 3, D, H, W), voxels of the template grid.

    Field ``k < n`` is ``phi_age o phi_ind`` or ``phi_ind o phi_age`` (equal odds): the ageing field of an age
    drawn uniformly over the modelled range and a ventricle log offset ~ N(0, VENTRICLE_LOG_SD), and an
    individual smooth field; field ``n + k`` is its inverse. Deterministic given ``seed``.
    """
    if int(n_fields) != n_fields or n_fields < 1:
        raise ValueError(f"n_fields must be a positive integer, got {n_fields!r}")
    model = AgeingModel(template)
    rng = np.random.default_rng([int(seed), 0x5EED])
    forward, backward = [], []
    for _ in range(int(n_fields)):
        age = float(rng.uniform(*AGE_RANGE))
        offset = float(rng.normal(0.0, VENTRICLE_LOG_SD))
        ageing, coarse = model.coarse_field(age, offset)
        ageing_inv, _ = model.coarse_field(age, offset, inverse=True)
        individual, individual_inv = individual_dvf(rng, coarse, with_inverse=True)
        if rng.random() < 0.5:  # (A o I)^-1 = I^-1 o A^-1
            field, inverse = compose(ageing, individual), compose(individual_inv, ageing_inv)
        else:
            field, inverse = compose(individual, ageing), compose(ageing_inv, individual_inv)
        forward.append(resample_dvf(field, coarse, template.grid))
        backward.append(resample_dvf(inverse, coarse, template.grid))
    return torch.cat(forward + backward)


def mirror(image: torch.Tensor, dvf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-right mirror image of an (image, DVF) pair: both flipped along D, the D displacement negated, so
    ``warp_image(*mirror(m, u)) == flip(warp_image(m, u))``.

    Args:
        image: (N, C, D, H, W). dvf: (N, 3, D, H, W), voxels.
    """
    sign = torch.tensor([-1.0, 1.0, 1.0], dtype=dvf.dtype, device=dvf.device).view(3, 1, 1, 1)
    return image.flip(2), dvf.flip(2) * sign


def synthetic_pairs(images: torch.Tensor, bank: torch.Tensor, batch: int, generator: torch.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of (moving, fixed, true DVF) with ``warp_image(moving, dvf) == fixed`` up to intensity gain;
    each pair is mirrored along the left-right axis (D) with probability 1/2 (:func:`mirror`).

    Args:
        images: (M, 1, D, H, W) candidates for the moving image (training images, and the template if wanted).
        bank: (K, 3, D, H, W) fields from :func:`field_bank`, voxels.
        batch: pairs to draw (images and fields with replacement).
        generator: the stage's random generator (so a resumed run draws the same pairs).
    Returns:
        moving (batch, 1, D, H, W), fixed (batch, 1, D, H, W), dvf (batch, 3, D, H, W) in voxels.
    """
    if images.shape[2:] != bank.shape[2:]:
        raise ValueError(f"images {tuple(images.shape[2:])} and fields {tuple(bank.shape[2:])} differ in size")
    image_idx = torch.randint(0, len(images), (batch,), generator=generator)
    field_idx = torch.randint(0, len(bank), (batch,), generator=generator)
    lo, hi = GAIN_RANGE  # each image of a pair gets its own global gain, drawn as the cohort's subjects' are
    gains = lo + (hi - lo) * torch.rand(2, batch, 1, 1, 1, 1, generator=generator)
    flipped = torch.rand(batch, generator=generator) < 0.5
    moving = images[image_idx]
    dvf = bank[field_idx]
    moving[flipped], dvf[flipped] = mirror(moving[flipped], dvf[flipped])
    fixed = warp_image(moving, dvf) * gains[1]
    return moving * gains[0], fixed, dvf
