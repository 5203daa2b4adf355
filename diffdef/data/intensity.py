"""The one intensity convention of DiffDef: every image the models see is on the template's scale.

The template's T1 (``diffdef.template``) is in [0, 1]; the synthetic cohort is made from it with a gain of
0.9-1.1, a real T1 is in arbitrary scanner units. Both training routes apply :func:`to_template_scale`, which
multiplies an image so that the 99.5th percentile of its positive (brain) voxels equals the template's own
99.5th percentile on the same grid, then clips to [0, 1.5]. The template is a fixed point of the function,
and so is an image it already normalised (idempotent), so ``diffdef-prepare`` can write normalised images
and the manifest loader can apply the same function again without changing them.

Why a percentile of the positive voxels: the brightest 0.5 % (vessels, fat remnants, resampling overshoot)
would make ``x / max`` unstable, and leaving the zero background out makes the figure independent of the
field of view. Why match the template rather than 1.0: the registration network compares subjects with the
warped template by intensity (MSE), so white matter must have the template's brightness.
"""

from __future__ import annotations

import functools

import numpy as np

from diffdef_runtime.grid import Grid, get_grid

PERCENTILE = 99.5
CLIP_MAX = 1.5


def _positive_percentile(data: np.ndarray, name: str) -> float:
    positive = data[data > 0]
    if positive.size == 0:
        raise ValueError(f"{name}: no positive voxels, cannot normalise intensities (is the image empty?)")
    return float(np.percentile(positive, PERCENTILE))


def template_level(grid: str | Grid) -> float:
    """The template T1's 99.5th percentile of positive voxels on ``grid`` (about 0.99 on every grid)."""
    return _template_level(get_grid(grid))


@functools.lru_cache(maxsize=4)
def _template_level(grid: Grid) -> float:
    from diffdef.template import load_template

    return _positive_percentile(load_template(grid).t1, f"template on {grid.name}")


def to_template_scale(data: np.ndarray, grid: str | Grid, name: str = "image") -> np.ndarray:
    """``data`` (float, any shape, background 0) on the template's intensity scale: float32, in [0, 1.5].

    ``name`` names the image in errors (an image without positive voxels cannot be scaled).
    """
    data = np.asarray(data, dtype=np.float32)
    scale = np.float32(template_level(grid) / _positive_percentile(data, name))
    out = data * scale
    np.clip(out, 0.0, CLIP_MAX, out=out)
    return out
