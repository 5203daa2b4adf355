"""diffdef_runtime.schedulers: parity with MONAI's schedulers, pinned golden values, numpy/torch equality,
sampling-loop properties and config validation."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from diffdef_runtime.schedulers import (
    DDIMSampler,
    DDPMSampler,
    ScheduleConfig,
    StepResult,
    add_noise,
    alphas_cumprod,
    betas,
    guided,
    make_sampler,
    monai_timesteps,
    noise_coefficients,
    training_target,
)

PREDICTION_TYPES = ["epsilon", "v_prediction"]
SMALL_T = 100


def _monai(cls, config: ScheduleConfig, float64: bool = False, **kwargs):
    """The MONAI scheduler for ``config``; with ``float64`` its schedule buffers are recomputed in float64 by
    MONAI's own formula, so step arithmetic can be compared without MONAI's float32 schedule rounding."""
    schedule = "scaled_linear_beta" if config.beta_schedule == "scaled_linear" else "linear_beta"
    sched = cls(
        num_train_timesteps=config.num_train_timesteps,
        schedule=schedule,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        clip_sample=config.clip_sample,
        prediction_type=config.prediction_type,
        **kwargs,
    )
    if float64:
        b0, b1, n = config.beta_start, config.beta_end, config.num_train_timesteps
        if config.beta_schedule == "scaled_linear":
            sched.betas = torch.linspace(b0**0.5, b1**0.5, n, dtype=torch.float64) ** 2
        else:
            sched.betas = torch.linspace(b0, b1, n, dtype=torch.float64)
        sched.alphas = 1.0 - sched.betas
        sched.alphas_cumprod = torch.cumprod(sched.alphas, dim=0)
    return sched


def _arrays(dtype=np.float64, shape=(2, 3, 4, 5, 6), seed=0):
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal(shape).astype(dtype) for _ in range(3))


# ----------------------------------------------------------------------------------------------- schedule
@pytest.mark.parametrize("schedule", ["scaled_linear", "linear"])
@pytest.mark.parametrize("T", [SMALL_T, 1000])
def test_alphas_cumprod_matches_monai(schedule, T):
    config = ScheduleConfig(num_train_timesteps=T, beta_schedule=schedule, beta_start=0.0015, beta_end=0.0205)
    ours = alphas_cumprod(config)
    assert ours.dtype == np.float64 and ours.shape == (T,)
    monai_ab = _monai(DDPMScheduler, config).alphas_cumprod.double().numpy()  # MONAI: float32
    np.testing.assert_allclose(ours, monai_ab, rtol=0, atol=1e-6)
    monai_ab64 = _monai(DDPMScheduler, config, float64=True).alphas_cumprod.numpy()
    np.testing.assert_allclose(ours, monai_ab64, rtol=1e-12, atol=0)
    np.testing.assert_allclose(betas(config), 1.0 - ours / np.concatenate([[1.0], ours[:-1]]), rtol=1e-9)


def test_golden_values_pinned():
    """Computed once with this module (and agreeing with MONAI at the time); pins the numbers independently of
    MONAI."""
    ab = alphas_cumprod(ScheduleConfig())
    assert ab[0] == pytest.approx(0.9985, abs=1e-15)
    assert ab[499] == pytest.approx(0.10857599619322768, rel=1e-12)
    assert ab[999] == pytest.approx(9.691086681147455e-05, rel=1e-12)
    # The DDPM paper's linear schedule (1e-4 .. 0.02) ends at the well-known 4.036e-5.
    linear = alphas_cumprod(ScheduleConfig(beta_schedule="linear", beta_start=1e-4, beta_end=0.02))
    assert linear[-1] == pytest.approx(4.03582977e-05, rel=1e-8)

    ddim = DDIMSampler(ScheduleConfig())  # v_prediction, T=1000
    ddim.set_timesteps(20)
    assert ddim.timesteps.tolist() == [
        999, 946, 894, 841, 789, 736, 684, 631, 578, 526, 473, 421, 368, 315, 263, 210, 158, 105, 53, 0
    ]
    prev, x0 = ddim.step(np.array([0.5]), 999, np.array([1.0]))
    assert prev[0] == pytest.approx(0.9967916662864788, rel=1e-12)
    assert x0[0] == pytest.approx(-0.49013143998654224, rel=1e-12)
    prev, x0 = ddim.step(np.array([0.5]), 53, np.array([1.0]))
    assert prev[0] == pytest.approx(0.8630972256301239, rel=1e-12)
    assert x0[0] == pytest.approx(0.8052794904905329, rel=1e-12)

    ddpm = DDPMSampler(ScheduleConfig(prediction_type="epsilon"))
    prev, x0 = ddpm.step(np.array([0.5]), 500, np.array([1.0]), noise=np.array([-1.0]))
    assert prev[0] == pytest.approx(0.9088044657406945, rel=1e-12)
    assert x0[0] == pytest.approx(1.608104755092113, rel=1e-12)


# ----------------------------------------------------------------------------------------------- timesteps
@pytest.mark.parametrize("T", [50, SMALL_T, 1000])
def test_timesteps_match_monai_for_every_step_count(T):
    ddpm = DDPMScheduler(num_train_timesteps=T)
    ddim = DDIMScheduler(num_train_timesteps=T)
    for n in range(1, T + 1):
        ours = monai_timesteps(T, n)
        ddpm.set_timesteps(n)
        ddim.set_timesteps(n)
        assert ours.dtype == np.int64
        np.testing.assert_array_equal(ours, ddpm.timesteps.numpy(), err_msg=f"DDPM T={T} n={n}")
        np.testing.assert_array_equal(ours, ddim.timesteps.numpy(), err_msg=f"DDIM T={T} n={n}")


def test_set_timesteps_on_samplers():
    config = ScheduleConfig(num_train_timesteps=SMALL_T)
    for cls in (DDPMSampler, DDIMSampler):
        sampler = cls(config)
        np.testing.assert_array_equal(sampler.timesteps, np.arange(SMALL_T - 1, -1, -1))  # default: all T
        sampler.set_timesteps(10)
        assert sampler.num_inference_steps == 10 and sampler.timesteps[0] == SMALL_T - 1
        assert sampler.timesteps[-1] == 0 and np.all(np.diff(sampler.timesteps) < 0)
        for bad in (0, -3, SMALL_T + 1, 2.5, True, "10"):
            with pytest.raises(ValueError, match="num_inference_steps"):
                sampler.set_timesteps(bad)
        sampler.set_timesteps(np.int64(SMALL_T))  # numpy integers are fine
        assert len(sampler.timesteps) == SMALL_T


# ----------------------------------------------------------------------------------------------- steps vs MONAI
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("num_steps", [SMALL_T, 7])
@pytest.mark.parametrize("eta", [0.0, 0.6])
def test_ddim_steps_match_monai(prediction_type, num_steps, eta):
    config = ScheduleConfig(num_train_timesteps=SMALL_T, prediction_type=prediction_type)
    ours = DDIMSampler(config, eta=eta)
    ours.set_timesteps(num_steps)
    x, out, _ = _arrays()
    for float64 in (True, False):
        ref = _monai(DDIMScheduler, config, float64=float64)
        ref.set_timesteps(num_steps)
        dtype, tol = (np.float64, 1e-10) if float64 else (np.float32, 1e-5)
        xs, outs = x.astype(dtype), out.astype(dtype)
        for t in list(ours.timesteps[:3]) + list(ours.timesteps[-2:]):
            gen = torch.Generator().manual_seed(int(t))
            ref_prev, ref_x0 = ref.step(torch.from_numpy(outs), int(t), torch.from_numpy(xs), eta=eta, generator=gen)
            noise = None
            if ours.needs_noise(t):
                noise = torch.randn(xs.shape, dtype=torch.from_numpy(xs).dtype,
                                    generator=torch.Generator().manual_seed(int(t))).numpy()
            got = ours.step(outs, t, xs, noise=noise)
            assert got.prev_sample.dtype == dtype
            np.testing.assert_allclose(got.prev_sample, ref_prev.numpy(), rtol=0, atol=tol, err_msg=f"t={t}")
            np.testing.assert_allclose(got.pred_original_sample, ref_x0.numpy(), rtol=0, atol=tol)
            np.testing.assert_allclose(ours.predict_x0(outs, t, xs), ref_x0.numpy(), rtol=0, atol=tol)
            assert ours.prev_timestep(t) == int(t) - SMALL_T // num_steps  # MONAI's rule


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_ddpm_steps_match_monai(prediction_type):
    """With all T steps (the only setting where MONAI's DDPM is a proper sampler) every step matches."""
    config = ScheduleConfig(num_train_timesteps=SMALL_T, prediction_type=prediction_type)
    ours = DDPMSampler(config)
    x, out, _ = _arrays()
    for float64 in (True, False):
        ref = _monai(DDPMScheduler, config, float64=float64)
        # float32: MONAI's 1 - alpha_bar near t=0 loses digits (alpha_bar_0 = 0.9985), hence 5e-5 there.
        dtype, tol = (np.float64, 1e-10) if float64 else (np.float32, 5e-5)
        xs, outs = x.astype(dtype), out.astype(dtype)
        for t in (SMALL_T - 1, SMALL_T // 2, 3, 1, 0):
            ref_prev, ref_x0 = ref.step(
                torch.from_numpy(outs), t, torch.from_numpy(xs), generator=torch.Generator().manual_seed(t)
            )
            noise = torch.randn(xs.shape, dtype=torch.from_numpy(xs).dtype,
                                generator=torch.Generator().manual_seed(t)).numpy()
            assert ours.needs_noise(t) == (t > 0)
            got = ours.step(outs, t, xs, noise=noise if t > 0 else None)
            np.testing.assert_allclose(got.prev_sample, ref_prev.numpy(), rtol=0, atol=tol, err_msg=f"t={t}")
            np.testing.assert_allclose(got.pred_original_sample, ref_x0.numpy(), rtol=0, atol=tol)


def test_clip_sample_matches_monai():
    config = ScheduleConfig(num_train_timesteps=SMALL_T, prediction_type="epsilon", clip_sample=True)
    x, out, noise = _arrays(seed=3)
    x, out = 3.0 * x, 3.0 * out  # so that clipping bites
    ddim, ref = DDIMSampler(config), _monai(DDIMScheduler, config, float64=True)
    ddim.set_timesteps(10)
    ref.set_timesteps(10)
    got = ddim.step(out, 50, x)
    ref_prev, ref_x0 = ref.step(torch.from_numpy(out), 50, torch.from_numpy(x))
    assert np.abs(got.pred_original_sample).max() <= 1.0
    np.testing.assert_allclose(got.prev_sample, ref_prev.numpy(), atol=1e-10)
    np.testing.assert_allclose(got.pred_original_sample, ref_x0.numpy(), atol=1e-10)
    # and on torch tensors (the .clip method exists on both)
    got_t = ddim.step(torch.from_numpy(out), 50, torch.from_numpy(x))
    np.testing.assert_allclose(got_t.prev_sample.numpy(), ref_prev.numpy(), atol=1e-10)


# ----------------------------------------------------------------------------------------------- numpy == torch
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_same_functions_on_numpy_and_torch(prediction_type):
    config = ScheduleConfig(prediction_type=prediction_type)
    x, out, noise = _arrays(np.float32)
    tx, tout, tnoise = (torch.from_numpy(a.copy()) for a in (x, out, noise))
    ddim = DDIMSampler(config, eta=0.5)
    ddim.set_timesteps(20)
    ddpm = DDPMSampler(config)
    ddpm.set_timesteps(50)
    cases = [
        (ddim.step(out, 946, x, noise), ddim.step(tout, 946, tx, tnoise)),
        (ddim.step(out, 0, x), ddim.step(tout, 0, tx)),
        (ddpm.step(out, int(ddpm.timesteps[5]), x, noise), ddpm.step(tout, int(ddpm.timesteps[5]), tx, tnoise)),
    ]
    for np_res, t_res in cases:
        assert isinstance(t_res.prev_sample, torch.Tensor) and t_res.prev_sample.dtype == torch.float32
        assert np_res.prev_sample.dtype == np.float32
        np.testing.assert_allclose(np_res.prev_sample, t_res.prev_sample.numpy(), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(np_res.pred_original_sample, t_res.pred_original_sample.numpy(), atol=1e-6)

    t = np.array([0, 17, 999])
    sab, s1mab = noise_coefficients(config, t)
    shape = (3, 1, 1, 1, 1)
    x3, n3, _ = _arrays(np.float32, shape=(3, 2, 2, 3, 4), seed=1)
    np_noisy = add_noise(x3, n3, sab.reshape(shape).astype(np.float32), s1mab.reshape(shape).astype(np.float32))
    t_noisy = add_noise(torch.from_numpy(x3), torch.from_numpy(n3),
                        torch.as_tensor(sab.reshape(shape), dtype=torch.float32),
                        torch.as_tensor(s1mab.reshape(shape), dtype=torch.float32))
    np.testing.assert_allclose(np_noisy, t_noisy.numpy(), atol=1e-6)
    np_target = training_target(x3, n3, sab.reshape(shape), s1mab.reshape(shape), prediction_type)
    t_target = training_target(torch.from_numpy(x3), torch.from_numpy(n3), torch.from_numpy(sab.reshape(shape)),
                               torch.from_numpy(s1mab.reshape(shape)), prediction_type)
    np.testing.assert_allclose(np_target, t_target.numpy(), atol=1e-6)
    np.testing.assert_allclose(guided(out, x, 3.0), guided(tout, tx, 3.0).numpy(), atol=1e-6)


def test_step_keeps_autograd_on_torch():
    config = ScheduleConfig()
    ddim = DDIMSampler(config)
    ddim.set_timesteps(5)
    out = torch.randn(1, 3, 2, 2, 2, requires_grad=True)
    sample = torch.randn(1, 3, 2, 2, 2)
    result = ddim.step(out, int(ddim.timesteps[-1]), sample)
    result.pred_original_sample.sum().backward()
    assert out.grad is not None and torch.all(out.grad != 0)


# ----------------------------------------------------------------------------------------------- training helpers
def test_training_helpers_match_monai_and_definitions():
    config = ScheduleConfig(prediction_type="v_prediction")
    x0, noise, _ = _arrays(seed=4, shape=(4, 2, 3, 3, 3))
    t = np.array([0, 1, 500, 999])
    sab, s1mab = noise_coefficients(config, t)
    assert sab.dtype == np.float64 and sab.shape == (4,)
    np.testing.assert_allclose(sab**2 + s1mab**2, 1.0, atol=1e-12)
    shape = (-1, 1, 1, 1, 1)
    xt = add_noise(x0, noise, sab.reshape(shape), s1mab.reshape(shape))
    ref = _monai(DDPMScheduler, config, float64=True)
    tt = torch.from_numpy(t)
    np.testing.assert_allclose(xt, ref.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), tt).numpy(), atol=1e-10)
    v = training_target(x0, noise, sab.reshape(shape), s1mab.reshape(shape), "v_prediction")
    ref_v = ref.get_velocity(torch.from_numpy(x0), torch.from_numpy(noise), tt).numpy()
    np.testing.assert_allclose(v, ref_v, atol=1e-10)
    assert training_target(x0, noise, sab.reshape(shape), s1mab.reshape(shape), "epsilon") is noise
    # The sampler inverts the target: predict_x0 / predict_epsilon of the true v at x_t give x0 / the noise back.
    sampler = DDIMSampler(config)
    for i, ti in enumerate(t):
        np.testing.assert_allclose(sampler.predict_x0(v[i], ti, xt[i]), x0[i], atol=1e-9)
        np.testing.assert_allclose(sampler.predict_epsilon(v[i], ti, xt[i]), noise[i], atol=1e-9)
    with pytest.raises(ValueError, match="prediction_type"):
        training_target(x0, noise, sab, s1mab, "sample")
    for bad in (np.array([1000]), np.array([-1]), np.array([1.5]), np.array([True])):
        with pytest.raises(ValueError, match="timesteps"):
            noise_coefficients(config, bad)


def test_guided():
    cond, uncond = np.array([2.0, 4.0]), np.array([1.0, 1.0])
    np.testing.assert_allclose(guided(cond, uncond, 1.0), cond)
    np.testing.assert_allclose(guided(cond, uncond, 0.0), uncond)
    np.testing.assert_allclose(guided(cond, uncond, 3.0), [4.0, 10.0])
    with pytest.raises(ValueError, match="scale"):
        guided(cond, uncond, float("nan"))


# ----------------------------------------------------------------------------------------------- properties
def _oracle(config: ScheduleConfig, x0: np.ndarray):
    """A 'network' that knows x0: returns the exact epsilon (or v) of x_t for that x0."""
    ab = alphas_cumprod(config)

    def model(x_t, t):
        eps = (x_t - math.sqrt(ab[t]) * x0) / math.sqrt(1.0 - ab[t])
        if config.prediction_type == "epsilon":
            return eps
        return math.sqrt(ab[t]) * eps - math.sqrt(1.0 - ab[t]) * x0

    return model


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_ddim_10_step_loop_recovers_x0(prediction_type):
    config = ScheduleConfig(prediction_type=prediction_type)
    x0, x_T, _ = _arrays(seed=7, shape=(1, 3, 4, 4, 4))
    model = _oracle(config, x0)
    sampler = make_sampler("ddim", config, 10)
    assert len(sampler.timesteps) == 10
    x = x_T
    for t in sampler.timesteps:
        result = sampler.step(model(x, int(t)), t, x)
        np.testing.assert_allclose(result.pred_original_sample, x0, atol=1e-8)
        x = result.prev_sample
    np.testing.assert_allclose(x, x0, atol=1e-8)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_strided_ddpm_step_has_the_right_marginal(prediction_type):
    """With the true x0, x_t ~ q(x_t | x0) stepped to s must be distributed as q(x_s | x0) = N(sqrt(ab_s) x0,
    1 - ab_s) for any stride (Ho et al. 2020, eq. 4 and 6-7); MONAI's one-step beta fails this when strided."""
    config = ScheduleConfig(prediction_type=prediction_type)
    sampler = DDPMSampler(config)
    sampler.set_timesteps(10)
    ab = alphas_cumprod(config)
    rng = np.random.default_rng(11)
    x0 = np.full((200_000,), 0.7)
    model = _oracle(config, x0)
    for t in sampler.timesteps[:3]:
        s = sampler.prev_timestep(t)
        x_t = math.sqrt(ab[t]) * x0 + math.sqrt(1 - ab[t]) * rng.standard_normal(x0.shape)
        x_s = sampler.step(model(x_t, int(t)), t, x_t, noise=rng.standard_normal(x0.shape)).prev_sample
        assert x_s.mean() == pytest.approx(math.sqrt(ab[s]) * 0.7, abs=0.01)
        assert x_s.var() == pytest.approx(1 - ab[s], rel=0.02)


def test_noise_rules():
    config = ScheduleConfig(num_train_timesteps=SMALL_T)
    x, out, noise = _arrays()
    ddpm = DDPMSampler(config)
    ddpm.set_timesteps(10)
    with pytest.raises(ValueError, match="noise"):
        ddpm.step(out, int(ddpm.timesteps[0]), x)
    with pytest.raises(ValueError, match="noise shape"):
        ddpm.step(out, int(ddpm.timesteps[0]), x, noise=noise[:1])
    with pytest.raises(ValueError, match="not in this sampler's schedule"):
        ddpm.step(out, int(ddpm.timesteps[0]) - 1, x, noise=noise)
    last = ddpm.step(out, 0, x)  # the last step needs no noise and ignores any given
    np.testing.assert_array_equal(last.prev_sample, ddpm.step(out, 0, x, noise=noise).prev_sample)
    np.testing.assert_allclose(last.prev_sample, last.pred_original_sample, atol=1e-12)

    ddim = DDIMSampler(config)  # eta = 0: deterministic, noise ignored
    np.testing.assert_array_equal(ddim.step(out, 50, x).prev_sample, ddim.step(out, 50, x, noise).prev_sample)
    assert not ddim.needs_noise(50)
    ddim_eta = DDIMSampler(config, eta=1.0)
    assert ddim_eta.needs_noise(50) and not ddim_eta.needs_noise(0)
    with pytest.raises(ValueError, match="noise"):
        ddim_eta.step(out, 50, x)
    for bad_t in (-1, SMALL_T, 3.0, "5"):
        with pytest.raises(ValueError, match="timestep"):
            ddim.step(out, bad_t, x)
    for bad_eta in (-0.1, 1.5, float("nan"), "0"):
        with pytest.raises(ValueError, match="eta"):
            DDIMSampler(config, eta=bad_eta)
    prev, x0 = StepResult(1, 2)  # unpacks like MONAI's tuple
    assert (prev, x0) == (1, 2)


# ----------------------------------------------------------------------------------------------- config
def test_config_round_trip_and_defaults():
    config = ScheduleConfig()
    assert config.to_dict() == {
        "num_train_timesteps": 1000,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.0015,
        "beta_end": 0.0205,
        "prediction_type": "v_prediction",
        "clip_sample": False,
    }
    other = ScheduleConfig(num_train_timesteps=50, beta_schedule="linear", prediction_type="epsilon", clip_sample=True)
    assert ScheduleConfig.from_dict(json.loads(json.dumps(other.to_dict()))) == other
    assert ScheduleConfig.from_dict({"num_train_timesteps": 10}).beta_start == 0.0015
    with pytest.raises(ValueError, match="missing"):
        ScheduleConfig.from_dict({"num_train_timesteps": 10}, require_all=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.beta_start = 0.1  # type: ignore[misc]


@pytest.mark.parametrize(
    "field, value",
    [
        ("num_train_timesteps", 0),
        ("num_train_timesteps", 10.5),
        ("num_train_timesteps", True),
        ("beta_schedule", "cosine"),
        ("beta_start", 0.0),
        ("beta_start", float("nan")),
        ("beta_start", "0.001"),
        ("beta_end", 1.0),
        ("beta_end", 0.001),  # below beta_start
        ("prediction_type", "sample"),
        ("clip_sample", "yes"),
    ],
)
def test_bad_config_values_raise_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        ScheduleConfig(**{field: value})
    with pytest.raises(ValueError, match=field):
        ScheduleConfig.from_dict({field: value})


def test_unknown_config_key_and_sampler_name():
    with pytest.raises(ValueError, match="unknown field.*schedule_beta"):
        ScheduleConfig.from_dict({"schedule_beta": "linear"})
    with pytest.raises(ValueError, match="sampler"):
        make_sampler("pndm", ScheduleConfig())
    with pytest.raises(ValueError, match="config"):
        DDIMSampler({"num_train_timesteps": 10})  # type: ignore[arg-type]
