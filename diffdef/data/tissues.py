"""Tissue classes from label maps: one lookup for the template's labels, the synthetic cohort's and MUSE.

Every evaluation and every volume in a prepared manifest goes through :func:`tissue_masks`, so "CSF" means
the same voxels for a subject, the template and an atlas.

Classes (bool masks):
    ``lateral_ventricles``; ``ventricles`` (all: lateral, inferior lateral, third, fourth); ``csf`` (every
    CSF voxel, ventricles included); ``gm``; ``wm``; ``brain`` (everything labelled, label > 0).

Schemes:
    ``"diffdef"``: the template's and the synthetic cohort's labels (``diffdef.template``: 0 background,
    1 CSF, 2 GM, 3 WM, 4 lateral ventricles). The template has no third/fourth-ventricle label, so its
    ``ventricles`` are its lateral ventricles (a subject labelled with MUSE has more voxels in that class:
    the template and every warped template lose some Dice there by definition, the same for each).
    ``"muse"``: MUSE / DLMUSE label ids (the IXI segmentations; lists from ``shared/data/ixi/README.md``).
"""

from __future__ import annotations

import numpy as np

TISSUES = ("lateral_ventricles", "ventricles", "csf", "gm", "wm")
SCHEMES = ("diffdef", "muse")

_MUSE_LATERAL = (51, 52)
_MUSE_VENTRICLES = (4, 11, 49, 50, 51, 52)
_MUSE_OTHER_CSF = (1, 46)
_MUSE_WM = (40, 41, 61, 62, *range(81, 96))
_MUSE_GM = (23, 30, 31, 32, *range(36, 40), 47, 48, *range(55, 61), 71, 72, 73, 75, 76, *range(100, 110),
            *range(112, 126), 128, 129, *range(132, 158), *range(160, 188), *range(190, 208))

_IDS = {
    "diffdef": {"lateral_ventricles": (4,), "ventricles": (4,), "csf": (1, 4), "gm": (2,), "wm": (3,)},
    "muse": {"lateral_ventricles": _MUSE_LATERAL, "ventricles": _MUSE_VENTRICLES,
             "csf": _MUSE_VENTRICLES + _MUSE_OTHER_CSF, "gm": _MUSE_GM, "wm": _MUSE_WM},
}


def label_ids(scheme: str) -> dict[str, tuple[int, ...]]:
    """The label ids of each tissue class (:data:`TISSUES`) in ``scheme``."""
    if scheme not in _IDS:
        raise ValueError(f"unknown label scheme {scheme!r}; choose one of {list(SCHEMES)}")
    return dict(_IDS[scheme])


def tissue_masks(labels: np.ndarray, scheme: str) -> dict[str, np.ndarray]:
    """Bool masks of every class in :data:`TISSUES` plus ``brain`` (label > 0), each the shape of ``labels``."""
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        rounded = np.rint(labels)
        if not np.array_equal(rounded, labels):
            raise ValueError("a label map must hold integer ids (did it go through linear interpolation?)")
        labels = rounded.astype(np.int64)
    masks = {name: np.isin(labels, ids) for name, ids in label_ids(scheme).items()}
    masks["brain"] = labels > 0
    return masks


def tissue_volumes_ml(labels: np.ndarray, scheme: str, voxel_volume_ml: float) -> dict[str, float]:
    """Volume of every class (and ``brain``) in mL: ``{"lateral_ventricles": 17.2, ...}``."""
    return {name: float(mask.sum()) * float(voxel_volume_ml) for name, mask in tissue_masks(labels, scheme).items()}
