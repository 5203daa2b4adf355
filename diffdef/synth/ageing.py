"""The ground-truth ageing deformation of the synthetic cohort.

The template is taken to be the anatomy of age ``REFERENCE_AGE`` (25). Ageing composes two stationary
velocity fields (SVFs), each integrated by scaling and squaring (:func:`diffdef.geometry.integrate_svf`),
so every ageing deformation is diffeomorphic. With ``warped(x) = T(x + u(x))`` a velocity pointing towards *increasing*
CSF makes CSF grow, so positive gains expand:

    phi = exp(k_s * b_s) o exp(k_v * b_v)      (velocities in voxels of the field grid)
    b_v = sigma * grad log(G_sigma * ventricle_prob + eps) / spacing**2
    b_s = sigma * grad log(G_sigma * sulcal_csf + eps) / spacing**2 * w_s

``G_sigma`` is a Gaussian of ``sigma`` = 4 mm, gradients are per voxel, so ``k`` is a dimensionless gain of
roughly "mm of displacement per unit". Both terms use the log of the smoothed map: a plain gradient
flow concentrates all expansion in a few sink voxels (Jacobian -> 0, then numerical folding, at about 4x
growth of the ventricles), the log potential spreads it and reaches about 9x fold-free. ``w_s`` confines
cortical atrophy to CSF and grey matter (about zero in white matter, at the brain outline and around the
lateral ventricles; reduced inside large CSF pools), so the brain outline stays put, CSF grows into grey
matter, and the two terms barely interact: the cortical flow is applied after the ventricle flow and is the
identity around the ventricles, so it leaves their volume unchanged.

Limits: sulcal CSF is a network of thin sheets, and a smooth fold-free flow can only about double it
(2 mm grid; less on the 4 mm grid); beyond that (from about age 55-60) the sulcal target is clipped to the
largest fold-free gain and a warning is logged once. Ventricle targets above about 9x the template
(about 150-170 mL: age 90 with a +1 SD offset) are clipped the same way.

Targets (DESIGN.md, "Data"): lateral ventricles grow at ``r(a)`` per year, 1 %/yr at 20 rising linearly to
2 %/yr at 50 and 4.5 %/yr at 80 (same slope on to 90), ``V(a) = V_T exp(int_25^a r)``; sulcal CSF grows
2 %/yr (``exp(0.02 (a - 25))``). Each gain is found from a table of soft volume versus gain, computed once
per grid (memory + optional disk cache) and inverted by interpolation. Grey matter is not calibrated (see
:meth:`AgeingModel.tissue_report`). On the paper grid the fields are integrated on the 2 mm grid and
upsampled (they are smooth at that scale; this keeps a 1 mm subject at a few seconds on a CPU).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage as ndi

from diffdef.geometry import compose, integrate_svf, jacobian_determinant, warp_image, warp_labels
from diffdef.synth import fields
from diffdef.template import Template, load_template
from diffdef_runtime.grid import GRIDS, Grid

log = logging.getLogger(__name__)

REFERENCE_AGE = 25.0
AGE_RANGE = (20.0, 90.0)
SULCAL_RATE = 0.02  # per year, relative
# Ventricle growth rate (per year, relative) at these ages, linear in between.
_RATE_KNOTS = ((20.0, 0.010), (50.0, 0.020), (80.0, 0.045), (90.0, 0.045 + 10.0 * 0.025 / 30.0))

CODE_VERSION = 1  # bump when the model or the calibration changes (keys the disk cache)
SIGMA_MM = 4.0
LOG_EPS = 0.02
J_FLOOR = 0.002  # calibration tables stop before the minimum Jacobian determinant falls below this
_VENT_GAINS = (0.0, 1.0, 2.0, 3.0, 4.5, 6.0, 8.0, 10.0, 12.0, 15.0, 18.0, 21.0, 24.0, 28.0)
_VENT_GAINS_NEG = (-1.0, -2.0, -3.0, -4.5, -6.0, -8.0)
_SULC_GAINS = (0.0, 3.0, 6.0, 9.0, 12.0, 16.0, 20.0, 24.0, 28.0, 32.0, 40.0)
_SULC_GAINS_NEG = (-3.0, -6.0, -10.0, -15.0)


def check_age(age: float) -> float:
    """``age`` as a float; ValueError naming it when it is outside ``AGE_RANGE``."""
    a = float(age)
    if not AGE_RANGE[0] <= a <= AGE_RANGE[1]:
        raise ValueError(f"age {age!r} is outside the modelled range {AGE_RANGE[0]:g}-{AGE_RANGE[1]:g} years")
    return a


def ventricle_growth_rate(age: float) -> float:
    """Relative ventricle growth per year at ``age`` (0.01 = 1 %/yr)."""
    ages, rates = zip(*_RATE_KNOTS)
    return float(np.interp(check_age(age), ages, rates))


def ventricle_log_ratio(age: float) -> float:
    """``log(V(age) / V(25)) = int_25^age r(s) ds`` (exact for the piecewise-linear rate; < 0 below 25)."""
    a = check_age(age)
    lo, hi = sorted((REFERENCE_AGE, a))
    pts = sorted({lo, hi, *(k for k, _ in _RATE_KNOTS if lo < k < hi)})
    rates = [ventricle_growth_rate(p) for p in pts]
    total = sum(0.5 * (r0 + r1) * (p1 - p0) for p0, p1, r0, r1 in zip(pts, pts[1:], rates, rates[1:]))
    return total if a >= REFERENCE_AGE else -total


def sulcal_log_ratio(age: float) -> float:
    """``log(S(age) / S(25))`` for sulcal CSF: 2 %/yr."""
    return SULCAL_RATE * (check_age(age) - REFERENCE_AGE)


@dataclass(frozen=True, eq=False)
class Atlas:
    """The template warped by a (ground-truth) deformation.

    Attributes:
        age: years. t1: (1, 1, D, H, W) float32. labels: (1, 1, D, H, W) uint8 (nearest-neighbour warp).
        dvf: (1, 3, D, H, W) template -> atlas, voxels. ventricle_volume_ml / sulcal_csf_ml / gm_ml: soft
        volumes of the warped soft maps, mL.
    """

    age: float
    t1: torch.Tensor
    labels: torch.Tensor
    dvf: torch.Tensor
    ventricle_volume_ml: float
    sulcal_csf_ml: float
    gm_ml: float


def field_grid(grid: Grid) -> Grid:
    """Grid on which the ageing SVF is built and integrated: the grid itself, or 2 mm for the paper grid."""
    return GRIDS["2mm"] if grid.spacing_mm < GRIDS["2mm"].spacing_mm else grid


@functools.lru_cache(maxsize=4)
def _basis(grid: Grid) -> tuple[torch.Tensor, torch.Tensor]:
    """(b_v, b_s), each (1, 3, d, h, w) on ``field_grid(grid)``, voxels per unit gain."""
    tpl = load_template(field_grid(grid))
    sp = tpl.grid.spacing_mm
    scale = SIGMA_MM / sp**2
    sigma = SIGMA_MM / sp
    b_v = fields.gradient_field(np.log(fields.gaussian(tpl.ventricle_prob, sigma) + LOG_EPS), scale)
    inside = np.clip(2.0 * fields.gaussian(tpl.brain_mask, 2.0 / sp) - 1.0, 0.0, 1.0)  # 0 at the outline
    not_wm = np.clip(1.0 - fields.gaussian(tpl.wm, 1.5 / sp), 0.0, 1.0) ** 3
    # 0 within 2 mm of the lateral ventricles, rising smoothly to 1 at 18 mm (a sharper edge folds when
    # composed with a strong ventricle flow).
    ramp = np.clip((ndi.distance_transform_edt(tpl.ventricle_prob < 0.05) * sp - 2.0) / 16.0, 0.0, 1.0)
    not_vent = ramp * ramp * (3.0 - 2.0 * ramp)
    # Slows the flow inside large CSF pools (smoothed over one voxel), which would otherwise become sinks.
    not_pool = np.clip(1.0 - 0.8 * fields.gaussian(tpl.sulcal_csf, 1.0), 0.0, 1.0)
    b_s = fields.gradient_field(np.log(fields.gaussian(tpl.sulcal_csf, sigma) + LOG_EPS), scale)
    b_s = b_s * torch.from_numpy((inside * not_wm * not_vent * not_pool).astype(np.float32))[None, None]
    return b_v, b_s


def _svf(velocity: torch.Tensor) -> torch.Tensor:
    return integrate_svf(velocity, fields.squaring_steps(velocity))


def _integrate(grid: Grid, k_v: float, k_s: float, j_min: bool = False, upsample: bool = True,
               inverse: bool = False):
    """DVF (1, 3, D, H, W, voxels) for gains (k_v, k_s) on ``grid`` (on ``field_grid(grid)`` unless
    ``upsample``), and its minimum Jacobian determinant (NaN unless ``j_min``).

    ``phi = exp(k_s b_s) o exp(k_v b_v)``: the ventricle flow acts first on the template, and the cortical
    flow, which is the identity around the lateral ventricles, does not change their volume. With
    ``inverse``, the exact inverse ``phi^-1 = exp(-k_v b_v) o exp(-k_s b_s)``.
    """
    b_v, b_s = _basis(grid)
    sign = -1.0 if inverse else 1.0
    ventricle = _svf(sign * k_v * b_v) if k_v != 0.0 else None
    cortical = _svf(sign * k_s * b_s) if k_s != 0.0 else None
    if ventricle is not None and cortical is not None:  # phi^-1 = exp(-k_v b_v) o exp(-k_s b_s)
        dvf = compose(ventricle, cortical) if inverse else compose(cortical, ventricle)
    else:
        dvf = next((flow for flow in (ventricle, cortical) if flow is not None), torch.zeros_like(b_v))
    j = float(jacobian_determinant(dvf).min()) if j_min else float("nan")
    return (fields.resample_dvf(dvf, field_grid(grid), grid) if upsample else dvf), j


def _soft_maps(tpl: Template) -> torch.Tensor:
    """(1, 4, D, H, W): ventricle_prob, sulcal_csf, gm, wm."""
    return torch.cat([tpl.torch(n) for n in ("ventricle_prob", "sulcal_csf", "gm", "wm")], dim=1)


def _table(grid: Grid, component: int, gains_pos, gains_neg) -> tuple[np.ndarray, np.ndarray]:
    """(gains, volumes mL) for one component, monotone, cut where the field gets close to folding."""
    maps = _soft_maps(load_template(grid))
    rows: dict[float, float] = {}
    for gains in (gains_pos, gains_neg):
        previous = rows.get(0.0)
        for k in gains:
            ks = (k, 0.0) if component == 0 else (0.0, k)
            dvf, j_min = _integrate(grid, *ks, j_min=True)
            volume = float(fields.soft_volume_ml(warp_image(maps[:, component : component + 1], dvf), grid))
            if j_min < J_FLOOR or (previous is not None and (volume - previous) * np.sign(k) <= 0):
                log.debug("component %d: table stops at gain %g (J min %.4f)", component, k, j_min)
                break
            rows[k], previous = volume, volume
    gains = np.array(sorted(rows))
    return gains, np.array([rows[k] for k in gains])


def _code_hash() -> str:
    import hashlib
    import importlib.metadata
    import inspect
    import sys

    from diffdef import template

    h = hashlib.sha1(importlib.metadata.version("nilearn").encode())
    for module in (template, fields, sys.modules[__name__]):
        h.update(inspect.getsource(module).encode())
    return h.hexdigest()[:12]


@functools.lru_cache(maxsize=4)
def calibration(grid: Grid) -> dict[str, np.ndarray]:
    """Calibration tables of ``grid``: ``vent_k``/``vent_ml`` and ``sulc_k``/``sulc_ml`` (gain -> soft mL).

    Memory-cached per grid and, unless ``DIFFDEF_NO_CACHE`` is set, stored under ``~/.cache/diffdef``
    (or ``$DIFFDEF_CACHE_DIR``) keyed by ``CODE_VERSION``, the nilearn version and a hash of the source of
    the template/ageing modules (any edit recomputes).
    """
    key = f"ageing-{grid.name}-v{CODE_VERSION}-{_code_hash()}.npz"
    cached = fields.cache_load(key)
    if cached is not None and {"vent_k", "vent_ml", "sulc_k", "sulc_ml"} <= set(cached):
        return cached
    log.info("calibrating the ageing model on the %s grid (once; cached)", grid.name)
    vent_k, vent_ml = _table(grid, 0, _VENT_GAINS, _VENT_GAINS_NEG)
    sulc_k, sulc_ml = _table(grid, 1, _SULC_GAINS, _SULC_GAINS_NEG)
    tables = dict(vent_k=vent_k, vent_ml=vent_ml, sulc_k=sulc_k, sulc_ml=sulc_ml)
    fields.cache_save(key, tables)
    return tables


_WARNED: set[tuple[str, str]] = set()


def _invert(gains: np.ndarray, volumes: np.ndarray, target_ml: float, what: str) -> float:
    """Gain giving ``target_ml`` (monotone cubic in log volume), clipped to the table (warned once per grid)."""
    from scipy.interpolate import PchipInterpolator

    logv = np.log(volumes)
    t = float(np.log(target_ml))
    if t < logv[0] or t > logv[-1]:
        level = logging.DEBUG if what in _WARNED else logging.WARNING
        _WARNED.add(what)
        log.log(level, "%s target %.1f mL is outside the reachable fold-free range %.1f-%.1f mL; clipped",
                what, target_ml, volumes[0], volumes[-1])
    return float(PchipInterpolator(logv, gains)(np.clip(t, logv[0], logv[-1])))


class AgeingModel:
    """Ground-truth ageing of the template (see the module docstring).

    Args:
        template: the template (or a grid name, loaded with :func:`load_template`).
    """

    def __init__(self, template: Template | str | Grid = "2mm"):
        self.template = template if isinstance(template, Template) else load_template(template)
        self.grid = self.template.grid
        self._tables = calibration(self.grid)
        self._v0 = self.template.volume_ml("ventricle_prob")
        self._s0 = self.template.volume_ml("sulcal_csf")

    def ventricle_volume_ml(self, age: float, ventricle_log_offset: float = 0.0) -> float:
        """Target (analytic) lateral-ventricle volume at ``age``, mL: ``V_T exp(int_25^age r + offset)``."""
        return self._v0 * float(np.exp(ventricle_log_ratio(age) + ventricle_log_offset))

    def sulcal_csf_volume_ml(self, age: float) -> float:
        """Target (analytic) sulcal CSF volume at ``age``, mL."""
        return self._s0 * float(np.exp(sulcal_log_ratio(age)))

    def gains(self, age: float, ventricle_log_offset: float = 0.0) -> tuple[float, float]:
        """(k_v, k_s) reaching the targets at ``age`` (ventricles shifted by ``ventricle_log_offset``)."""
        t = self._tables
        v_target = self.ventricle_volume_ml(age, ventricle_log_offset)
        k_v = _invert(t["vent_k"], t["vent_ml"], v_target, f"{self.grid.name} ventricle")
        k_s = _invert(t["sulc_k"], t["sulc_ml"], self.sulcal_csf_volume_ml(age), f"{self.grid.name} sulcal CSF")
        return k_v, k_s

    def field(self, age: float, ventricle_log_offset: float = 0.0) -> torch.Tensor:
        """Ageing DVF template -> age, (1, 3, D, H, W) float32, voxels of the template grid."""
        dvf, _ = _integrate(self.grid, *self.gains(age, ventricle_log_offset))
        return dvf

    def coarse_field(self, age: float, ventricle_log_offset: float = 0.0, inverse: bool = False
                     ) -> tuple[torch.Tensor, Grid]:
        """The ageing DVF (or, with ``inverse``, its exact inverse) on the grid it is built on (``field_grid``:
        2 mm for the paper grid, else the template grid) and that grid; upsample with
        :func:`diffdef.synth.fields.resample_dvf`."""
        dvf, _ = _integrate(self.grid, *self.gains(age, ventricle_log_offset), upsample=False, inverse=inverse)
        return dvf, field_grid(self.grid)

    def volumes(self, dvf: torch.Tensor) -> dict[str, float]:
        """Soft volumes (mL) of ventricles, sulcal CSF, GM and WM after warping by ``dvf`` (1, 3, D, H, W)."""
        warped = warp_image(_soft_maps(self.template), dvf)
        vols = fields.soft_volume_ml(warped.transpose(0, 1), self.grid)
        return dict(zip(("ventricles", "sulcal_csf", "gm", "wm"), (float(v) for v in vols)))

    def warp(self, dvf: torch.Tensor, age: float) -> Atlas:
        """The template warped by ``dvf`` (1, 3, D, H, W): an :class:`Atlas` labelled with ``age``."""
        vols = self.volumes(dvf)
        return Atlas(age=float(age), t1=warp_image(self.template.torch("t1"), dvf),
                     labels=warp_labels(self.template.torch("labels"), dvf), dvf=dvf,
                     ventricle_volume_ml=vols["ventricles"], sulcal_csf_ml=vols["sulcal_csf"], gm_ml=vols["gm"])

    def ground_truth_atlas(self, age: float, ventricle_log_offset: float = 0.0) -> Atlas:
        """The true population atlas at ``age`` (offset 0: the median ventricle of that age)."""
        return self.warp(self.field(age, ventricle_log_offset), age)

    def tissue_report(self, ages=(20, 30, 40, 50, 60, 70, 80, 90)) -> list[dict[str, float]]:
        """Measured soft volumes at ``ages`` and the GM change per year between them (logged, not calibrated)."""
        rows, prev = [], None
        for age in ages:
            row = {"age": float(age), **self.volumes(self.field(age))}
            if prev is not None:
                row["gm_pct_per_year"] = 100.0 * np.log(row["gm"] / prev["gm"]) / (row["age"] - prev["age"])
            log.info("ageing %s: %s", self.grid.name, {k: round(v, 2) for k, v in row.items()})
            rows.append(row)
            prev = row
        return rows
