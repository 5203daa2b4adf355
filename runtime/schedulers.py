"""Diffusion scheduler arithmetic, written once for training (torch) and the torch-free runtime (numpy).

Why hand-written: MONAI's schedulers (``monai.networks.schedulers``) are ``torch.nn.Module`` subclasses and the
runtime must work where torch is absent, so the same arithmetic lives here in numpy/Python-float form. It
reproduces MONAI's ``DDPMScheduler``/``DDIMScheduler`` (checked in ``tests/test_schedulers.py``), including
MONAI's timestep spacing, so a model trained and sampled with MONAI behaves the same here.

Array-type neutrality: every ``step``/``predict_*``/``add_noise``/``training_target``/``guided`` function uses
only ``+``, ``-``, ``*``, ``/`` between arrays and Python-float coefficients (``math.sqrt`` on scalars), plus the
``.clip(lo, hi)`` method (present on numpy arrays and torch tensors) when ``clip_sample`` is on. The same
function therefore works on numpy arrays and torch tensors (CPU or CUDA, with autograd) and keeps the array's
dtype (a Python float does not promote float32/float16 arrays).

Notation (Ho et al. 2020): ``beta_t`` the noise variance of step t, ``alpha_t = 1 - beta_t``,
``alpha_bar_t = prod_{s<=t} alpha_s`` (:func:`alphas_cumprod`), with timesteps ``t = 0 .. T-1`` (0-based, as in
MONAI and diffusers). The forward process in closed form (Ho et al. 2020, eq. 4):
``x_t = sqrt(alpha_bar_t) * x_0 + sqrt(1 - alpha_bar_t) * eps``.
"""

from __future__ import annotations

import math
import numbers
import operator
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

BETA_SCHEDULES = ("scaled_linear", "linear")
PREDICTION_TYPES = ("v_prediction", "epsilon")
# MONAI's DDPM "fixed_small" variance is clamped from below to this value.
_MIN_VARIANCE = 1e-20


# --------------------------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class ScheduleConfig:
    """The noise schedule a diffusion model was trained with (saved with the model).

    Attributes:
        num_train_timesteps: T, the number of diffusion steps in training (timesteps 0 .. T-1).
        beta_schedule: ``"scaled_linear"`` (betas = linspace(sqrt(beta_start), sqrt(beta_end), T)**2, MONAI's
            ``scaled_linear_beta`` / Stable Diffusion) or ``"linear"`` (betas = linspace(beta_start, beta_end, T),
            Ho et al. 2020).
        beta_start, beta_end: first and last beta, ``0 < beta_start <= beta_end < 1``.
        prediction_type: what the network predicts: ``"v_prediction"`` (Salimans & Ho 2022,
            ``v = sqrt(alpha_bar) * eps - sqrt(1 - alpha_bar) * x_0``) or ``"epsilon"`` (the noise, Ho et al. 2020).
        clip_sample: clip the predicted x_0 to [-1, 1] inside ``step`` (as MONAI's ``clip_sample``). Off for
            latents, whose range is not [-1, 1].

    Defaults are those of the Diff-Def public code (scaled-linear 0.0015-0.0205, v-prediction, T=1000).
    """

    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.0015
    beta_end: float = 0.0205
    prediction_type: str = "v_prediction"
    clip_sample: bool = False

    def __post_init__(self) -> None:
        t = self.num_train_timesteps
        if isinstance(t, bool) or not isinstance(t, numbers.Integral) or int(t) < 1:
            raise ValueError(f"ScheduleConfig.num_train_timesteps must be an integer >= 1, got {t!r}")
        object.__setattr__(self, "num_train_timesteps", int(t))
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(
                f"ScheduleConfig.beta_schedule must be one of {list(BETA_SCHEDULES)}, got {self.beta_schedule!r}"
            )
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"ScheduleConfig.prediction_type must be one of {list(PREDICTION_TYPES)}, "
                f"got {self.prediction_type!r}"
            )
        for name in ("beta_start", "beta_end"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"ScheduleConfig.{name} must be a finite number, got {value!r}")
            if not 0.0 < float(value) < 1.0:
                raise ValueError(f"ScheduleConfig.{name} must lie in (0, 1), got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.beta_start > self.beta_end:
            raise ValueError(
                f"ScheduleConfig.beta_start ({self.beta_start}) must be <= beta_end ({self.beta_end})"
            )
        if not isinstance(self.clip_sample, (bool, np.bool_)):
            raise ValueError(f"ScheduleConfig.clip_sample must be a bool, got {self.clip_sample!r}")
        object.__setattr__(self, "clip_sample", bool(self.clip_sample))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, require_all: bool = False) -> "ScheduleConfig":
        """Build from :meth:`to_dict` output. Unknown keys are an error (naming them); missing keys take the
        defaults unless ``require_all`` is true (then they are an error too)."""
        if not isinstance(data, dict):
            raise ValueError(f"ScheduleConfig.from_dict expects a dict, got {type(data).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"ScheduleConfig: unknown field(s) {unknown}; known fields are {known}")
        if require_all:
            missing = [k for k in known if k not in data]
            if missing:
                raise ValueError(f"ScheduleConfig: missing field(s) {missing}")
        return cls(**data)


def betas(config: ScheduleConfig) -> np.ndarray:
    """The betas, float64 ``(T,)``, as MONAI's ``linear_beta`` / ``scaled_linear_beta`` (computed in float64,
    MONAI uses float32)."""
    n = config.num_train_timesteps
    if config.beta_schedule == "linear":
        return np.linspace(config.beta_start, config.beta_end, n, dtype=np.float64)
    # scaled_linear
    return np.linspace(math.sqrt(config.beta_start), math.sqrt(config.beta_end), n, dtype=np.float64) ** 2


def alphas_cumprod(config: ScheduleConfig) -> np.ndarray:
    """``alpha_bar_t = prod_{s<=t} (1 - beta_s)`` for t = 0 .. T-1, float64 ``(T,)`` (Ho et al. 2020, eq. 4)."""
    return np.cumprod(1.0 - betas(config))


# --------------------------------------------------------------------------------------------- training helpers
def noise_coefficients(config: ScheduleConfig, t: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t))`` for integer timesteps ``t`` (any shape, e.g. one per
    sample), as float64 numpy arrays of ``t``'s shape.

    The caller reshapes them for broadcasting (e.g. ``(N,)`` -> ``(N, 1, 1, 1, 1)`` for ``(N, C, D, H, W)``
    arrays) and converts them to its array type (``torch.as_tensor(c, dtype=x.dtype, device=x.device)``) before
    :func:`add_noise` / :func:`training_target`.
    """
    t_arr = np.asarray(t)
    if t_arr.dtype == np.bool_ or not np.issubdtype(t_arr.dtype, np.integer):
        raise ValueError(f"timesteps must be integers, got dtype {t_arr.dtype}")
    n = config.num_train_timesteps
    if t_arr.size and (t_arr.min() < 0 or t_arr.max() >= n):
        raise ValueError(f"timesteps must lie in [0, {n - 1}], got min {t_arr.min()} max {t_arr.max()}")
    ab = alphas_cumprod(config)[t_arr]
    return np.sqrt(ab), np.sqrt(1.0 - ab)


def add_noise(x0: Any, noise: Any, sqrt_ab: Any, sqrt_1mab: Any) -> Any:
    """Forward process in closed form, ``x_t = sqrt(alpha_bar_t) * x_0 + sqrt(1 - alpha_bar_t) * eps``
    (Ho et al. 2020, eq. 4). Coefficients come from :func:`noise_coefficients`, already shaped for broadcasting
    and of the arrays' type."""
    return sqrt_ab * x0 + sqrt_1mab * noise


def training_target(x0: Any, noise: Any, sqrt_ab: Any, sqrt_1mab: Any, prediction_type: str) -> Any:
    """What the network learns to predict at ``x_t``: ``"epsilon"`` -> the noise (Ho et al. 2020, eq. 14);
    ``"v_prediction"`` -> ``v = sqrt(alpha_bar_t) * eps - sqrt(1 - alpha_bar_t) * x_0`` (Salimans & Ho 2022,
    sec. 4). Coefficients as in :func:`add_noise`."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return sqrt_ab * noise - sqrt_1mab * x0
    raise ValueError(f"prediction_type must be one of {list(PREDICTION_TYPES)}, got {prediction_type!r}")


def guided(cond_out: Any, uncond_out: Any, scale: float) -> Any:
    """Classifier-free guidance (Ho & Salimans 2022): ``uncond + scale * (cond - uncond)``.
    ``scale = 1`` is the conditional output, ``0`` the unconditional one."""
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"guidance scale must be finite, got {scale!r}")
    return uncond_out + scale * (cond_out - uncond_out)


# --------------------------------------------------------------------------------------------- samplers
@dataclass(frozen=True, eq=False)
class StepResult:
    """Result of one reverse step: ``prev_sample`` (x at the previous timestep) and ``pred_original_sample``
    (the predicted x_0, clipped if ``clip_sample``). Unpacks like MONAI's tuple:
    ``prev, x0 = sampler.step(...)``."""

    prev_sample: Any
    pred_original_sample: Any

    def __iter__(self):
        return iter((self.prev_sample, self.pred_original_sample))


def _torch_linspace_float32(start: float, end: float, steps: int) -> np.ndarray:
    """Reproduce ``torch.linspace(start, end, steps)`` (float32, CPU) bit for bit.

    torch computes ``step = (end - start) / (steps - 1)`` in float32, then fills the first half as
    ``start + step * i`` and the second half as ``end - step * (steps - 1 - i)``, each with one rounding (fused
    multiply-add). A float64 linspace rounds differently often enough to change ``round()`` at .5 ties (e.g.
    T=50, 23 steps), so MONAI's timesteps need this emulation. The float64 expression below is exact for the
    arguments used here (integers < 2**24 and step >= 1), so casting it once to float32 equals the fused result.
    """
    if steps == 1:
        return np.array([start], dtype=np.float32)
    f32 = np.float32
    step = np.float64((f32(end) - f32(start)) / f32(steps - 1))
    i = np.arange(steps, dtype=np.float64)
    half = steps // 2
    first = np.float64(f32(start)) + step * i
    second = np.float64(f32(end)) - step * (steps - 1 - i)
    return np.where(i < half, first, second).astype(np.float32)


def monai_timesteps(num_train_timesteps: int, num_inference_steps: int) -> np.ndarray:
    """MONAI's inference timesteps: ``torch.linspace(T - 1, 0, n).round().long()`` (DDPM and DDIM with
    ``steps_offset=0``), descending int64, from T-1 down to 0. Round half to even, as torch."""
    values = _torch_linspace_float32(float(num_train_timesteps - 1), 0.0, num_inference_steps)
    return np.round(values).astype(np.int64)


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{what} must be an integer, got {value!r}") from None


class _Sampler:
    """Shared state of the samplers: the schedule and the inference timesteps."""

    def __init__(self, config: ScheduleConfig) -> None:
        if not isinstance(config, ScheduleConfig):
            raise ValueError(f"config must be a ScheduleConfig, got {type(config).__name__}")
        self.config = config
        self.num_train_timesteps = config.num_train_timesteps
        self.alphas_cumprod = alphas_cumprod(config)
        self.num_inference_steps = 0
        self.timesteps = np.zeros(0, dtype=np.int64)
        self.set_timesteps(config.num_train_timesteps)

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Choose the inference timesteps: ``num_inference_steps`` in [1, T], spaced as MONAI
        (:func:`monai_timesteps`); sets ``.timesteps`` (int64, descending, ending at 0)."""
        n = _as_int(num_inference_steps, "num_inference_steps")
        if not 1 <= n <= self.num_train_timesteps:
            raise ValueError(
                f"num_inference_steps must lie in [1, {self.num_train_timesteps}] (num_train_timesteps), got {n}"
            )
        self.num_inference_steps = n
        self.timesteps = monai_timesteps(self.num_train_timesteps, n)

    def _timestep(self, t: Any) -> int:
        t = _as_int(t, "timestep t")
        if not 0 <= t < self.num_train_timesteps:
            raise ValueError(f"timestep t must lie in [0, {self.num_train_timesteps - 1}], got {t}")
        return t

    def _alpha_bar(self, t: int) -> float:
        """alpha_bar_t as a Python float; 1.0 for t < 0 (no noise before the first step)."""
        return 1.0 if t < 0 else float(self.alphas_cumprod[t])

    def predict_x0(self, model_output: Any, t: int, sample: Any) -> Any:
        """The x_0 implied by the network output at ``x_t = sample`` (not clipped):
        epsilon: ``(x_t - sqrt(1 - alpha_bar_t) * eps) / sqrt(alpha_bar_t)`` (Ho et al. 2020, eq. 15; Song et al.
        2021, eq. 12 "predicted x_0"); v: ``sqrt(alpha_bar_t) * x_t - sqrt(1 - alpha_bar_t) * v``
        (Salimans & Ho 2022, sec. 4)."""
        ab = self._alpha_bar(self._timestep(t))
        if self.config.prediction_type == "epsilon":
            return (sample - math.sqrt(1.0 - ab) * model_output) / math.sqrt(ab)
        return math.sqrt(ab) * sample - math.sqrt(1.0 - ab) * model_output

    def predict_epsilon(self, model_output: Any, t: int, sample: Any) -> Any:
        """The noise implied by the network output: epsilon: the output itself; v:
        ``sqrt(alpha_bar_t) * v + sqrt(1 - alpha_bar_t) * x_t`` (Salimans & Ho 2022)."""
        ab = self._alpha_bar(self._timestep(t))
        if self.config.prediction_type == "epsilon":
            return model_output
        return math.sqrt(ab) * model_output + math.sqrt(1.0 - ab) * sample

    def _clip(self, x0: Any) -> Any:
        return x0.clip(-1.0, 1.0) if self.config.clip_sample else x0

    @staticmethod
    def _check_noise(noise: Any, sample: Any, why: str) -> None:
        if noise is None:
            raise ValueError(
                f"{why} needs `noise` (a standard normal array shaped like `sample`); the caller draws it"
            )
        if tuple(noise.shape) != tuple(sample.shape):
            raise ValueError(f"noise shape {tuple(noise.shape)} must equal sample shape {tuple(sample.shape)}")


class DDPMSampler(_Sampler):
    """Ancestral DDPM sampling (Ho et al. 2020), MONAI ``DDPMScheduler`` with ``variance_type="fixed_small"``.

    One step from ``t`` to the next timestep ``s`` of ``.timesteps`` (``s = -1`` after the last) samples the
    posterior ``q(x_s | x_t, x_0)`` at the predicted x_0 (Ho et al. 2020, eq. 6-7):
    ``mean = sqrt(alpha_bar_s) * beta / (1 - alpha_bar_t) * x_0``
    ``     + sqrt(alpha) * (1 - alpha_bar_s) / (1 - alpha_bar_t) * x_t``,
    ``var = (1 - alpha_bar_s) / (1 - alpha_bar_t) * beta``, with ``alpha = alpha_bar_t / alpha_bar_s`` and
    ``beta = 1 - alpha`` (the ancestral update of Ho et al. 2020, eq. 11, when the network predicts epsilon).

    With ``num_inference_steps = T`` (s = t - 1, the default) this is MONAI's step exactly. With fewer steps it
    uses the effective beta of the stride (as diffusers does), whereas MONAI keeps the one-step ``beta_t`` and
    so denoises far too little; that is a deliberate deviation from MONAI.
    """

    def prev_timestep(self, t: int) -> int:
        """The timestep the step from ``t`` lands on (the next one in ``.timesteps``; -1 after the last)."""
        t = self._timestep(t)
        where = np.nonzero(self.timesteps == t)[0]
        if where.size == 0:
            raise ValueError(
                f"timestep {t} is not in this sampler's schedule ({self.num_inference_steps} steps); "
                "step through `.timesteps` after set_timesteps()"
            )
        i = int(where[0])
        return int(self.timesteps[i + 1]) if i + 1 < len(self.timesteps) else -1

    def needs_noise(self, t: int) -> bool:
        """Whether :meth:`step` at ``t`` needs ``noise`` (every step but the last)."""
        return self.prev_timestep(t) >= 0

    def step(self, model_output: Any, t: int, sample: Any, noise: Any = None) -> StepResult:
        """One reverse step from ``x_t = sample``. ``noise`` (standard normal, shaped like ``sample``, drawn by
        the caller so every backend gets the same) is required unless this is the last step, where it is
        ignored."""
        t = self._timestep(t)
        s = self.prev_timestep(t)
        ab_t, ab_s = self._alpha_bar(t), self._alpha_bar(s)
        alpha = ab_t / ab_s
        beta = 1.0 - alpha
        x0 = self._clip(self.predict_x0(model_output, t, sample))
        coef_x0 = math.sqrt(ab_s) * beta / (1.0 - ab_t)
        coef_xt = math.sqrt(alpha) * (1.0 - ab_s) / (1.0 - ab_t)
        prev = coef_x0 * x0 + coef_xt * sample
        if s >= 0:
            self._check_noise(noise, sample, f"DDPM step at t={t}")
            variance = max((1.0 - ab_s) / (1.0 - ab_t) * beta, _MIN_VARIANCE)
            prev = prev + math.sqrt(variance) * noise
        return StepResult(prev, x0)


class DDIMSampler(_Sampler):
    """DDIM sampling (Song et al. 2021), MONAI ``DDIMScheduler`` with ``set_alpha_to_one=True, steps_offset=0``.

    One step from ``t`` to ``s`` (Song et al. 2021, eq. 12 and 16):
    ``x_s = sqrt(alpha_bar_s) * x_0 + sqrt(1 - alpha_bar_s - sigma**2) * eps + sigma * noise`` with
    ``sigma = eta * sqrt((1 - alpha_bar_s) / (1 - alpha_bar_t)) * sqrt(1 - alpha_bar_t / alpha_bar_s)``;
    ``eta = 0`` is deterministic, ``eta = 1`` is DDPM-like. ``alpha_bar_s = 1`` for ``s < 0``.

    MONAI quirk kept for parity: ``s = t - T // num_inference_steps`` (:meth:`prev_timestep`), while
    ``.timesteps`` are spaced ``(T - 1) / (n - 1)`` apart, so ``s`` is a little below the next timestep (e.g.
    T=1000, 20 steps: 999 -> 949, then the model is evaluated at 946). With ``n = T`` both agree.
    """

    def __init__(self, config: ScheduleConfig, eta: float = 0.0) -> None:
        eta_f = float(eta) if isinstance(eta, numbers.Real) and not isinstance(eta, bool) else float("nan")
        if not 0.0 <= eta_f <= 1.0:
            raise ValueError(f"DDIM eta must be a number in [0, 1], got {eta!r}")
        self.eta = eta_f
        super().__init__(config)

    def prev_timestep(self, t: int) -> int:
        """MONAI's previous timestep: ``t - T // num_inference_steps`` (negative means alpha_bar = 1)."""
        return self._timestep(t) - self.num_train_timesteps // self.num_inference_steps

    def _sigma(self, t: int, s: int) -> float:
        ab_t, ab_s = self._alpha_bar(t), self._alpha_bar(s)
        variance = (1.0 - ab_s) / (1.0 - ab_t) * (1.0 - ab_t / ab_s)
        return self.eta * math.sqrt(max(variance, 0.0))

    def needs_noise(self, t: int) -> bool:
        """Whether :meth:`step` at ``t`` needs ``noise`` (``eta > 0`` and not the last step)."""
        t = self._timestep(t)
        return self._sigma(t, self.prev_timestep(t)) > 0.0

    def step(self, model_output: Any, t: int, sample: Any, noise: Any = None) -> StepResult:
        """One reverse step from ``x_t = sample``. ``noise`` is needed when ``eta > 0`` (ignored otherwise, and
        on the last step where sigma is 0)."""
        t = self._timestep(t)
        s = self.prev_timestep(t)
        ab_s = self._alpha_bar(s)
        x0 = self.predict_x0(model_output, t, sample)
        eps = self.predict_epsilon(model_output, t, sample)  # from the unclipped x0, as MONAI
        x0 = self._clip(x0)
        sigma = self._sigma(t, s)
        direction = math.sqrt(max(1.0 - ab_s - sigma * sigma, 0.0))
        prev = math.sqrt(ab_s) * x0 + direction * eps
        if sigma > 0.0:
            self._check_noise(noise, sample, f"DDIM step with eta={self.eta} at t={t}")
            prev = prev + sigma * noise
        return StepResult(prev, x0)


SAMPLERS = {"ddpm": DDPMSampler, "ddim": DDIMSampler}


def make_sampler(name: str, config: ScheduleConfig, num_inference_steps: int | None = None, **kwargs: Any):
    """``make_sampler("ddim", config, 20, eta=0.0)``: a sampler by name (``ddpm``, ``ddim``) with its timesteps
    set (all T when ``num_inference_steps`` is None)."""
    key = str(name).lower()
    if key not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    sampler = SAMPLERS[key](config, **kwargs)
    if num_inference_steps is not None:
        sampler.set_timesteps(num_inference_steps)
    return sampler
