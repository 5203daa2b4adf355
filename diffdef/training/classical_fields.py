"""Template -> subject fields from a classical registration (SimpleITK demons), for the exact targets' bank.

``ldm.field_source`` says where the bank's fields come from (the bank's neighbourhood means are the targets the
DVF decoder's basis is pre-fitted to, L_morph's first-order minimiser):

* ``"network"``: the frozen registration network (``ldm.field_targets.registration_fields``; the synthetic default);
* ``"demons"``: SimpleITK demons between the template T1 and each training image;
* ``"labels"``: the same demons between *tissue images* made from the template's label map and each training
  subject's segmentation (:func:`tissue_image`), so the fields follow the segmentations' boundaries.

Why (docs/METHOD.md, ``benchmarks/real_registration.py``): the registration network, trained on known-field
pairs of the template's own family, does not register real scans to the template: on 30 held-out IXI subjects
its fields bring the template's lateral-ventricle Dice with the subject's segmentation from 0.636 (no field) to
0.538; image demons give 0.714, label demons about 0.79. The registration is the one of ``diffdef-eval``'s
deformable protocol (:mod:`diffdef.evaluate.deformable`); about 2-4 s per subject on the 2 mm grid (2 cores).
"""

from __future__ import annotations

import dataclasses
import numpy as np
import torch
from tqdm.auto import tqdm

from diffdef.data.tissues import tissue_masks

FIELD_SOURCES = ("network", "demons", "labels")

# Intensity of each class in a tissue image: the T1 order (CSF < GM < WM), lateral ventricles apart from the other
# CSF so that their boundary counts, and brain labelled outside the five classes (brainstem, cerebellum ...) in
# between GM and WM. The same values for the template's and the subjects' label maps.
TISSUE_LEVELS = (("brain", 0.8), ("csf", 0.3), ("gm", 0.65), ("wm", 1.0), ("lateral_ventricles", 0.1))


def tissue_image(labels: np.ndarray, scheme: str) -> np.ndarray:
    """A float32 image of a label map (D, H, W): each tissue class at its :data:`TISSUE_LEVELS` value, 0 outside."""
    masks = tissue_masks(labels, scheme)
    out = np.zeros(np.shape(labels), dtype=np.float32)
    for name, level in TISSUE_LEVELS:  # later classes overwrite earlier ones
        out[masks[name]] = level
    return out


def _demons_bank(fixed_images, moving: np.ndarray, histogram_matching: bool, desc: str) -> torch.Tensor:
    from diffdef.evaluate.deformable import REGISTRATION, displacement_voxels, register

    settings = dataclasses.replace(REGISTRATION, histogram_matching=histogram_matching)
    fields = [torch.from_numpy(displacement_voxels(register(fixed, moving, settings)))
              for fixed in tqdm(fixed_images, desc=desc, dynamic_ncols=True)]
    return torch.stack(fields)


def demons_fields(template: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Image demons' template -> subject field of every image: template (1, 1, D, H, W), images (M, 1, D, H, W)
    -> (M, 3, D, H, W) float32 voxels on the CPU (``warp_image(template, u) ~ subject``)."""
    moving = template[0, 0].detach().cpu().numpy().astype(np.float32)
    return _demons_bank((images[i, 0].numpy() for i in range(len(images))), moving, True, "demons fields")


def label_fields(template_labels: np.ndarray, labels: torch.Tensor, scheme: str) -> torch.Tensor:
    """Label demons' template -> subject field of every subject: ``template_labels`` (D, H, W) in the ``diffdef``
    scheme, ``labels`` (M, D, H, W) integer ids in ``scheme`` -> (M, 3, D, H, W) float32 voxels on the CPU."""
    moving = tissue_image(template_labels, "diffdef")
    fixed = (tissue_image(labels[i].numpy(), scheme) for i in range(len(labels)))
    return _demons_bank(fixed, moving, False, "label demons fields")
