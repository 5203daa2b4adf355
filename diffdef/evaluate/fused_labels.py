"""The template's class maps in the subjects' own label definition, fused from the training subjects.

Why: the template's labels come from its probability maps (its "ventricles" are the lateral ventricles only, its
CSF/GM/WM boundaries an argmax), while the held-out subjects are scored against their own segmentations (MUSE for
IXI). Every warped-template method (model, compare models, template) then starts behind the linear average, whose
labels are the subjects' own (docs/EVALUATION.md, "The label-definition caveat"). Fusing removes that mismatch:
each training subject is registered onto the template (the deformable protocol's demons, on tissue images of the
label maps, so the registration follows the segmentations' boundaries), its class masks are carried onto the
template grid (nearest neighbour), and each class map is the fraction of subjects covering a voxel. Warped and
thresholded at 0.5 like the template's own maps, that is the subjects' majority vote on the template's anatomy.
No maintained library fuses label maps through given transforms on our grid, so these few lines are ours.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from diffdef.data.tissues import tissue_masks
from diffdef.evaluate.deformable import REGISTRATION, register_labels
from diffdef.evaluate.scores import CLASSES
from diffdef.training.classical_fields import tissue_image

# Tissue images, not T1s: no histogram matching (the same settings as the label-demons field bank).
FUSION_REGISTRATION = dataclasses.replace(REGISTRATION, histogram_matching=False)


def fused_class_maps(template_labels: np.ndarray, subject_labels: Sequence[np.ndarray], scheme: str,
                     log: Callable[[str], None] | None = None) -> np.ndarray:
    """(C, D, H, W) float32 in [0, 1], channels in :data:`CLASSES` order: per class, the fraction of the subjects
    whose mask of that class, registered onto the template, covers each voxel.

    Args:
        template_labels: (D, H, W) the template's label map (``diffdef`` scheme), the fixed image's source.
        subject_labels: each subject's (D, H, W) label map in ``scheme``, on the template grid after the affine
            alignment (training subjects only: never the subjects being scored).
    """
    if not len(subject_labels):
        raise ValueError("fusing the template's labels needs at least one training subject with a label map")
    fixed = tissue_image(template_labels, "diffdef")
    total = np.zeros((len(CLASSES), *np.shape(template_labels)), np.float32)
    for i, labels in enumerate(subject_labels, 1):
        on_template = register_labels(fixed, tissue_image(labels, scheme), labels, FUSION_REGISTRATION)
        masks = tissue_masks(on_template, scheme)
        for c, name in enumerate(CLASSES):
            total[c] += masks[name]
        if log is not None and (i % 20 == 0 or i == len(subject_labels)):
            log(f"template labels fused from {i}/{len(subject_labels)} training subjects")
    return total / np.float32(len(subject_labels))
