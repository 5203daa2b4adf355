"""The atlas generation loop, written once for every backend (ONNX Runtime, TensorRT, PyTorch).

A backend supplies three array functions (``Engines``); this module owns the noise, the scheduler loop,
classifier-free guidance, sample averaging and the measurements, all in numpy.

Noise is drawn with numpy from (seed, sample index [, step]) only, never from the condition: the atlas of
age 70 with seed 0 is the same whether 70 is asked alone or in a list, and atlases of different ages
share their noise (common random numbers), so differences between them come from the condition.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from diffdef_runtime.conditions import ConditionSpec
from diffdef_runtime.jacobian import jacobian_determinant
from diffdef_runtime.schedulers import ScheduleConfig, guided, make_sampler


#: Sampler steps of a model whose ``model.json`` / manifest records no ``default_steps``.
DEFAULT_STEPS = 20


def recorded_default_steps(meta: dict) -> int:
    """``meta["default_steps"]`` (model.json or a bundle manifest), else ``DEFAULT_STEPS``; >= 1."""
    steps = int(meta.get("default_steps") or DEFAULT_STEPS)
    if steps < 1:
        raise ValueError(f"default_steps must be >= 1, got {steps}")
    return steps


class Engines(Protocol):
    """What a backend provides. All arrays are float32 numpy, batch first."""

    name: str

    def denoise(self, latents: np.ndarray, timesteps: np.ndarray, condition: np.ndarray,
                condition_mask: np.ndarray) -> np.ndarray:
        """(N, C, d, h, w), (N,) int64, (N, K), (N, 1) -> model output (N, C, d, h, w)."""

    def decode_dvf(self, latents: np.ndarray) -> np.ndarray:
        """Unscaled latents (N, C, d, h, w) -> DVF (N, 3, D, H, W) in voxels."""

    def warp(self, image: np.ndarray, dvf: np.ndarray) -> np.ndarray:
        """(N, C, D, H, W) images, (N, 3, D, H, W) DVF -> warped (N, C, D, H, W); trilinear, border."""


@dataclass(frozen=True)
class ModelInfo:
    """What generation needs to know about a trained model (from ``model.json`` or a bundle manifest).

    Attributes:
        conditions: the condition spec (names, normalisation and trained ranges).
        schedule: the training noise schedule.
        latent_shape: (C, d, h, w) of the scaled latent.
        latent_scale: latents were multiplied by this for diffusion training.
        affine: 4x4 template affine; voxel_volume_ml: one voxel's volume.
        default_steps: the sampler steps used when none are asked for (``default_steps`` of ``model.json`` /
            the bundle manifest, chosen per model from ``benchmarks/sampling_steps.py``; ``DEFAULT_STEPS`` for
            models that record none).
    """

    conditions: ConditionSpec
    schedule: ScheduleConfig
    latent_shape: tuple[int, int, int, int]
    latent_scale: float
    affine: np.ndarray
    voxel_volume_ml: float
    default_steps: int = DEFAULT_STEPS


@dataclass(frozen=True)
class TemplateMaps:
    """The template and the maps warped with it: t1 (D, H, W) in [0, 1]; ventricle_prob (D, H, W) soft mask."""

    t1: np.ndarray
    ventricle_prob: np.ndarray


@dataclass
class AtlasResult:
    """One condition's atlas. Arrays on the template grid: atlas (D, H, W); dvf (3, D, H, W) voxels, the mean
    of ``samples`` DVFs; jacobian (D, H, W); ventricle_volume_ml from the warped soft ventricle map."""

    condition: dict[str, float]
    atlas: np.ndarray
    dvf: np.ndarray
    jacobian: np.ndarray
    ventricle_volume_ml: float
    seed: int
    steps: int
    sampler: str
    samples: int
    guidance: float
    backend: str
    timings_s: dict[str, float] = field(default_factory=dict)


def initial_noise(seed: int, sample: int, shape: tuple[int, ...]) -> np.ndarray:
    """z_T of sample ``sample``: float32 (C, d, h, w) standard normal from numpy's PCG64."""
    return np.random.default_rng([seed, sample]).standard_normal(shape, dtype=np.float32)


def step_noise(seed: int, sample: int, step: int, shape: tuple[int, ...]) -> np.ndarray:
    """Noise added by stochastic samplers (DDPM) at loop index ``step``: float32 (C, d, h, w)."""
    return np.random.default_rng([seed, sample, step + 1_000_000]).standard_normal(shape, dtype=np.float32)


def generate(engines: Engines, info: ModelInfo, template: TemplateMaps, conditions, *, steps: int = 20,
             sampler: str = "ddim", seed: int = 0, samples: int = 1, guidance: float = 1.0,
             progress: Callable[[int, int], None] | None = None, decode_batch: int = 8) -> list[AtlasResult]:
    """Generate one atlas per condition row, all conditions and samples denoised in one batch.

    Args:
        conditions: what ``ConditionSpec.normalise`` takes, e.g. ``{"age": [60, 70]}``.
        steps: sampler steps; sampler: ``ddim`` or ``ddpm``; seed: makes the result reproducible;
        samples: K DVFs drawn per condition and averaged (an atlas is a population mean);
        guidance: classifier-free guidance scale (1 = conditional only).
        progress: called as ``progress(done, total)`` after each denoising step.
        decode_batch: latents per DVF decoder call and conditions per warp call: memory grows with the batch at
            full resolution (the per-condition mean is summed over the decoder's chunks in sample order).
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if decode_batch < 1:
        raise ValueError(f"decode_batch must be >= 1, got {decode_batch}")
    cond = info.conditions.normalise(conditions)  # (M, K), warns outside the trained range
    raw = info.conditions.raw_values(conditions)
    m, k = cond.shape[0], samples
    schedule = make_sampler(sampler, info.schedule, steps)
    timings: dict[str, float] = {}

    tic = time.perf_counter()
    latents = np.stack([initial_noise(seed, s, info.latent_shape) for s in range(k) for _ in range(m)])
    cond_b = np.tile(cond, (k, 1)).astype(np.float32)  # row s*m + i = condition i, sample s
    n = latents.shape[0]
    ones, zeros = np.ones((n, 1), np.float32), np.zeros((n, 1), np.float32)
    total = len(schedule.timesteps)
    for i, t in enumerate(schedule.timesteps):
        t_b = np.full((n,), int(t), dtype=np.int64)
        if guidance == 1.0:
            out = engines.denoise(latents, t_b, cond_b, ones)
        else:
            both = engines.denoise(np.concatenate([latents, latents]), np.concatenate([t_b, t_b]),
                                   np.concatenate([cond_b, cond_b]), np.concatenate([ones, zeros]))
            out = guided(both[:n], both[n:], guidance)
        noise = None
        if schedule.needs_noise(int(t)):
            noise = np.stack([step_noise(seed, s, i, info.latent_shape) for s in range(k) for _ in range(m)])
        latents = schedule.step(out, int(t), latents, noise=noise).prev_sample.astype(np.float32)
        if progress is not None:
            progress(i + 1, total)
    timings["denoise"] = time.perf_counter() - tic

    tic = time.perf_counter()
    dvf_sum = None  # (M, 3, D, H, W): row r of the batch is sample r // m of condition r % m
    for start in range(0, n, decode_batch):
        chunk = engines.decode_dvf((latents[start:start + decode_batch] / info.latent_scale).astype(np.float32))
        if dvf_sum is None:
            dvf_sum = np.zeros((m, *chunk.shape[1:]), np.float32)
        for row, dvf in enumerate(chunk, start):
            dvf_sum[row % m] += dvf
    dvf_mean = (dvf_sum / np.float32(k)).astype(np.float32)
    timings["decode"] = time.perf_counter() - tic

    tic = time.perf_counter()
    maps = np.stack([template.t1, template.ventricle_prob])[None].astype(np.float32)
    # in chunks like the decoder: 31 conditions warped at once on the 1 mm grid ran out of memory on 24 GB
    warped = np.concatenate([engines.warp(np.repeat(maps, len(chunk), axis=0), chunk)
                             for chunk in np.array_split(dvf_mean, range(decode_batch, m, decode_batch))])
    timings["warp"] = time.perf_counter() - tic

    tic = time.perf_counter()
    jacobians = [jacobian_determinant(d) for d in dvf_mean]
    timings["jacobian"] = time.perf_counter() - tic
    per_condition = {key: value / m for key, value in timings.items()}

    results = []
    for i in range(m):
        condition = {name: float(raw[i, j]) for j, name in enumerate(info.conditions.names)}
        results.append(AtlasResult(
            condition=condition, atlas=warped[i, 0], dvf=dvf_mean[i], jacobian=jacobians[i],
            ventricle_volume_ml=float(warped[i, 1].sum() * info.voxel_volume_ml), seed=seed, steps=steps,
            sampler=sampler, samples=k, guidance=guidance, backend=engines.name, timings_s=dict(per_condition),
        ))
    return results
