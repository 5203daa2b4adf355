"""A synthetic ageing cohort: subjects made from the template by a known deformation, so the true
conditional atlas is known (``ground_truth_atlas``).

Subject ``i`` (deterministic given ``(seed, i)``; independent of how many subjects are made or in which order):

1. draws (from ``numpy.random.default_rng([seed, i])``, in this order) age ~ U(age_range), sex (50/50),
   ventricle log offset ``z ~ N(0, 0.4)``, gain ~ U(0.9, 1.1), the individual-velocity noise, the bias-field
   noise and the image noise;
2. deformation ``phi = phi_age o phi_ind``: the ageing field of (age, ``z`` + sex offset) composed with an
   individual smooth SVF (white noise smoothed with sigma 8 mm, scaled to a 2.5 mm maximum, integrated);
   sexes differ by ``SEX_LOG_OFFSET`` (men's ventricles x1.10), split +-half around 0 so that the population
   of one age is centred on the ground-truth atlas of that age;
3. image ``max(0, gain * bias * (T1 o phi) + noise)``, bias ``exp(f)`` with a smooth ``|f| <= log 1.1``,
   noise sd 0.02; labels ``labels o phi`` (nearest neighbour).

The random fields are drawn on the 4 mm grid and upsampled, so subject ``i`` of a seed has the same
anatomy on every grid (up to resolution). All torch work runs on the CPU in float32 and is deterministic.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from diffdef.geometry import compose, integrate_svf, warp_image, warp_labels
from diffdef.synth import fields
from diffdef.synth.ageing import AGE_RANGE, AgeingModel, Atlas
from diffdef.template import load_template
from diffdef_runtime.grid import GRIDS, Grid, get_grid

log = logging.getLogger(__name__)

VENTRICLE_LOG_SD = 0.4  # between people of one age (DESIGN.md)
SEX_LOG_OFFSET = math.log(1.10)  # men minus women, log ventricle volume (0.095)
INDIVIDUAL_SIGMA_MM = 8.0
INDIVIDUAL_MAX_MM = 2.5  # maximum individual velocity (about the maximum displacement), mm
BIAS_SIGMA_MM = 30.0
BIAS_MAX_LOG = math.log(1.10)
GAIN_RANGE = (0.9, 1.1)
NOISE_SD = 0.02
_RANDOM_GRID = GRIDS["4mm"]


def sex_log_offset(sex: str) -> float:
    """Ventricle log offset of a sex: ``+SEX_LOG_OFFSET / 2`` for "M", ``-SEX_LOG_OFFSET / 2`` for "F"."""
    if sex not in ("F", "M"):
        raise ValueError(f"sex must be 'F' or 'M', got {sex!r}")
    return 0.5 * SEX_LOG_OFFSET if sex == "M" else -0.5 * SEX_LOG_OFFSET


@dataclass(frozen=True, eq=False)
class Subject:
    """One synthetic subject.

    Attributes:
        index: position in the cohort. age: years. sex: "F" or "M".
        ventricle_log_offset: the individual ``z`` (without the sex offset).
        image: (1, 1, D, H, W) float32 T1, >= 0 (template scale: brain ~0.3-1.1).
        labels: (1, 1, D, H, W) uint8 (0 background, 1 CSF, 2 GM, 3 WM, 4 lateral ventricles).
        ventricle_volume_ml: soft volume of the warped ventricle map, mL.
        dvf: (1, 3, D, H, W) template -> subject, voxels (``image ~ T1(x + dvf(x))``).
    """

    index: int
    age: float
    sex: str
    ventricle_log_offset: float
    image: torch.Tensor
    labels: torch.Tensor
    ventricle_volume_ml: float
    dvf: torch.Tensor

    @property
    def sex_code(self) -> float:
        """0.0 for "F", 1.0 for "M"."""
        return 1.0 if self.sex == "M" else 0.0


def _smooth_random(noise: np.ndarray, sigma_mm: float) -> np.ndarray:
    """Gaussian smoothing (per leading channel) of noise drawn on the 4 mm random grid."""
    sigma = sigma_mm / _RANDOM_GRID.spacing_mm
    return np.stack([fields.gaussian(c, sigma) for c in noise.reshape(-1, *_RANDOM_GRID.shape)])


def individual_dvf(rng: np.random.Generator, grid: Grid, with_inverse: bool = False):
    """One individual deformation (1, 3, D, H, W), voxels of ``grid``: white noise on the 4 mm grid smoothed
    with ``INDIVIDUAL_SIGMA_MM``, scaled to an ``INDIVIDUAL_MAX_MM`` peak velocity, integrated, upsampled.
    With ``with_inverse``: ``(dvf, exact inverse)`` (the negated velocity integrated)."""
    velocity = _smooth_random(rng.standard_normal((3, *_RANDOM_GRID.shape)), INDIVIDUAL_SIGMA_MM)
    peak = np.sqrt((velocity**2).sum(0)).max()
    velocity *= INDIVIDUAL_MAX_MM / _RANDOM_GRID.spacing_mm / peak
    v = torch.from_numpy(velocity.astype(np.float32))[None]
    dvf = fields.resample_dvf(integrate_svf(v), _RANDOM_GRID, grid)
    return (dvf, fields.resample_dvf(integrate_svf(-v), _RANDOM_GRID, grid)) if with_inverse else dvf


class SyntheticCohort:
    """The synthetic ageing cohort on ``grid`` for ``seed`` (see the module docstring).

    Args:
        grid: "paper"/"1mm", "2mm", "4mm" or a Grid.
        seed: non-negative integer.
        age_range: (min, max) years, inside the modelled 20-90.
    """

    def __init__(self, grid: str | Grid = "2mm", seed: int = 0, age_range: tuple[float, float] = (20.0, 90.0)):
        lo, hi = (float(a) for a in age_range)
        if not AGE_RANGE[0] <= lo < hi <= AGE_RANGE[1]:
            raise ValueError(f"age_range {age_range} must satisfy {AGE_RANGE[0]:g} <= min < max <= {AGE_RANGE[1]:g}")
        if int(seed) != seed or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.grid = get_grid(grid)
        self.seed = int(seed)
        self.age_range = (lo, hi)
        self.template = load_template(self.grid)
        self.model = AgeingModel(self.template)
        self._maps = torch.cat([self.template.torch("t1"), self.template.torch("ventricle_prob")], dim=1)
        self._labels = self.template.torch("labels")

    def _rng(self, index: int) -> np.random.Generator:
        if int(index) != index or index < 0:
            raise IndexError(f"subject index must be a non-negative integer, got {index!r}")
        return np.random.default_rng([self.seed, int(index)])

    @staticmethod
    def _draw_parameters(rng: np.random.Generator, age_range: tuple[float, float]) -> dict:
        age = float(rng.uniform(*age_range))
        sex = "M" if rng.random() < 0.5 else "F"
        z = float(rng.normal(0.0, VENTRICLE_LOG_SD))
        gain = float(rng.uniform(*GAIN_RANGE))
        return dict(age=age, sex=sex, ventricle_log_offset=z, gain=gain)

    def parameters(self, index: int) -> dict:
        """The drawn parameters of subject ``index`` (age, sex, ventricle_log_offset, gain), no images (cheap)."""
        return self._draw_parameters(self._rng(index), self.age_range)

    def _bias(self, rng: np.random.Generator) -> torch.Tensor:
        """Multiplicative bias field (1, 1, D, H, W), ``exp(f)`` with ``max |f| = BIAS_MAX_LOG``."""
        f = _smooth_random(rng.standard_normal(_RANDOM_GRID.shape), BIAS_SIGMA_MM)[0]
        f -= f.mean()
        f *= BIAS_MAX_LOG / np.abs(f).max()
        f_t = torch.from_numpy(f.astype(np.float32))[None, None]
        return torch.exp(fields.resample_map(f_t, _RANDOM_GRID, self.grid))

    def subject(self, index: int) -> Subject:
        """Subject ``index`` (same result whatever other subjects were made, and in whatever order)."""
        return self._make(index)[0]

    def subject_and_ageing_field(self, index: int) -> tuple[Subject, torch.Tensor]:
        """Subject ``index`` and its ageing field alone (its age and ventricle offset, no individual deformation):
        (1, 3, D, H, W), voxels of the cohort's grid, equal to ``self.model.field(age, offset + sex offset)`` and
        taken from the subject's own integration rather than integrated again."""
        subject, ageing, coarse = self._make(index)
        return subject, fields.resample_dvf(ageing, coarse, self.grid)

    @torch.no_grad()
    def _make(self, index: int) -> tuple[Subject, torch.Tensor, Grid]:
        """Subject ``index``, its ageing DVF on the grid the ageing field is built on, and that grid."""
        rng = self._rng(index)
        p = self._draw_parameters(rng, self.age_range)
        ageing, coarse = self.model.coarse_field(p["age"], p["ventricle_log_offset"] + sex_log_offset(p["sex"]))
        individual = individual_dvf(rng, coarse)
        bias = self._bias(rng)
        noise = torch.from_numpy(rng.standard_normal(self.grid.shape, dtype=np.float32))[None, None]
        # phi_age o phi_ind, composed where the ageing field lives (2 mm for the paper grid), then upsampled
        dvf = fields.resample_dvf(compose(ageing, individual), coarse, self.grid)
        warped = warp_image(self._maps, dvf)
        image = torch.clamp(p["gain"] * bias * warped[:, :1] + NOISE_SD * noise, min=0.0)
        volume = float(fields.soft_volume_ml(warped[:, 1:2], self.grid))
        subject = Subject(index=int(index), age=p["age"], sex=p["sex"], ventricle_log_offset=p["ventricle_log_offset"],
                          image=image.contiguous(), labels=warp_labels(self._labels, dvf), ventricle_volume_ml=volume,
                          dvf=dvf)
        return subject, ageing, coarse

    def subjects(self, n: int, start: int = 0) -> Iterator[Subject]:
        """Subjects ``start .. start + n - 1``, made one at a time."""
        for i in range(start, start + n):
            yield self.subject(i)

    def ground_truth_atlas(self, age: float, sex: str | None = None) -> Atlas:
        """The true atlas at ``age``: the template warped by the ageing field with offset 0 (the median
        ventricle of that age over both sexes), or of one sex ("F"/"M")."""
        offset = 0.0 if sex is None else sex_log_offset(sex)
        return self.model.ground_truth_atlas(age, offset)


class SyntheticCohortDataset(torch.utils.data.Dataset):
    """Torch view of the first ``n`` subjects, made on the fly (no disk round trip).

    Items are dicts: ``image`` (1, D, H, W) float32, ``labels`` (1, D, H, W) uint8, and scalar float32
    tensors ``age`` (years), ``sex`` (0 = F, 1 = M), ``ventricle_volume_ml``; plus ``index`` (int).
    """

    def __init__(self, cohort: SyntheticCohort, n: int):
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.cohort = cohort
        self.n = int(n)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        if index < 0:
            index += self.n
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} subjects")
        s = self.cohort.subject(index)
        return {
            "image": s.image[0],
            "labels": s.labels[0],
            "age": torch.tensor(s.age, dtype=torch.float32),
            "sex": torch.tensor(s.sex_code, dtype=torch.float32),
            "ventricle_volume_ml": torch.tensor(s.ventricle_volume_ml, dtype=torch.float32),
            "index": index,
        }
