"""Honest baselines for a conditional atlas: the plain template and the linear (age-window) average.

* **Template**: the MNI152 template itself, i.e. a zero DVF. Its class masks go through exactly the same soft
  warp + threshold as a model's (:func:`diffdef.evaluate.scores.atlas_class_masks`), so a model whose DVF is
  zero scores exactly like the template.
* **Linear average** (:func:`linear_average`): for a subject of age ``a``, the training subjects with
  ``|age - a| <= window`` (default 5 years; when fewer than ``min_subjects`` = 3 fall in it, the window widens
  to the distance of the 3rd-nearest training subject, and that is recorded). The atlas image is their voxel-wise
  mean image; each tissue class's atlas mask is their majority vote (fraction of those subjects in the class
  >= 0.5). Note: it is built from the subjects' own label definitions (e.g. MUSE, with third/fourth ventricles),
  so unlike the warped template it has no label-definition mismatch with the held-out subjects; its Dice is
  favoured by that, and it has no DVF (no Table-1 field figures). Its lateral-ventricle volume is the sum of its
  soft (fraction) map, i.e. the mean volume of the chosen subjects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from diffdef.data.tissues import TISSUES

MIN_SUBJECTS = 3
DEFAULT_WINDOW = 5.0


@dataclass(frozen=True)
class Window:
    """Which training subjects form the linear average at one age."""

    age: float
    indices: tuple[int, ...]
    window: float  # the half-width actually used (years)
    widened: bool  # True when the requested window held fewer than ``min_subjects``


def select_window(train_ages: Sequence[float], age: float, window: float = DEFAULT_WINDOW,
                  min_subjects: int = MIN_SUBJECTS) -> Window:
    """Indices of training subjects with ``|age_i - age| <= window``; widened to the ``min_subjects`` nearest.

    When widened, the window becomes the distance of the ``min_subjects``-th nearest subject (every subject at
    that distance is included, so ties never depend on order).
    """
    ages = np.asarray(train_ages, dtype=np.float64)
    if ages.size == 0:
        raise ValueError("the linear average needs training subjects (split == train); none found")
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    distance = np.abs(ages - float(age))
    inside = np.flatnonzero(distance <= window + 1e-9)
    if inside.size >= min(min_subjects, ages.size):
        return Window(float(age), tuple(int(i) for i in inside), float(window), False)
    k = min(min_subjects, ages.size)
    widened = float(np.sort(distance)[k - 1])
    inside = np.flatnonzero(distance <= widened + 1e-9)
    return Window(float(age), tuple(int(i) for i in inside), widened, True)


def linear_average(images: Sequence[np.ndarray], class_masks: Sequence[dict[str, np.ndarray]],
                   classes: Sequence[str] = (*TISSUES, "brain")) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Mean image and majority-vote class masks of a set of subjects.

    Args:
        images: (D, H, W) arrays on one grid.
        class_masks: per subject, class name -> bool (D, H, W) mask.

    Returns:
        ``(mean image float32, {class: bool mask where >= half of the subjects have the class})``.
    """
    if len(images) == 0 or len(images) != len(class_masks):
        raise ValueError(f"need one or more images with one mask set each, got {len(images)} and {len(class_masks)}")
    mean = np.mean(np.stack([np.asarray(i, dtype=np.float32) for i in images]), axis=0).astype(np.float32)
    majority = {}
    for name in classes:
        fraction = np.mean(np.stack([np.asarray(m[name], dtype=np.float32) for m in class_masks]), axis=0)
        majority[name] = fraction >= 0.5
    return mean, majority


class LinearAverage:
    """Linear-average atlases of a training cohort, cached per window (one build per distinct set of subjects)."""

    def __init__(self, train_ages: Sequence[float], images: Sequence[np.ndarray],
                 class_masks: Sequence[dict[str, np.ndarray]], window: float = DEFAULT_WINDOW,
                 min_subjects: int = MIN_SUBJECTS, voxel_volume_ml: float = 1.0):
        self.ages = list(map(float, train_ages))
        self.images, self.class_masks = list(images), list(class_masks)
        self.window, self.min_subjects, self.voxel_volume_ml = float(window), int(min_subjects), float(voxel_volume_ml)
        self._cache: dict[tuple[int, ...], tuple[np.ndarray, dict[str, np.ndarray]]] = {}

    def at(self, age: float) -> tuple[Window, np.ndarray, dict[str, np.ndarray]]:
        chosen = select_window(self.ages, age, self.window, self.min_subjects)
        if chosen.indices not in self._cache:
            self._cache[chosen.indices] = linear_average([self.images[i] for i in chosen.indices],
                                                         [self.class_masks[i] for i in chosen.indices])
        image, masks = self._cache[chosen.indices]
        return chosen, image, masks

    def ventricle_volume_ml(self, age: float) -> float:
        """Lateral-ventricle volume of the linear average at ``age`` (mL): its SOFT ventricle map (the fraction of
        the chosen subjects in the class) summed x voxel volume, i.e. the mean volume of those subjects, the
        analogue of the soft volume of a warped template (a majority mask shrinks thin structures)."""
        chosen = select_window(self.ages, age, self.window, self.min_subjects)
        counts = [np.count_nonzero(self.class_masks[i]["lateral_ventricles"]) for i in chosen.indices]
        return float(np.mean(counts)) * self.voxel_volume_ml
