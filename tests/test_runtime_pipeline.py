"""The generation loop (``diffdef_runtime.pipeline.generate``) on fake numpy engines: noise scheme, sample
averaging, guidance batching, DDPM step noise. No bundle, no torch."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from diffdef_runtime.conditions import ConditionSpec, ExtrapolationWarning
from diffdef_runtime.pipeline import ModelInfo, TemplateMaps, generate, initial_noise, step_noise
from diffdef_runtime.schedulers import ScheduleConfig, guided, make_sampler

LATENT = (2, 3, 4, 3)
GRID = (12, 16, 12)  # 4x the latent
SPEC = ConditionSpec(names=("age", "sex"), ranges={"age": (20.0, 90.0), "sex": (0.0, 1.0)},
                     trained={"age": (45.0, 85.0), "sex": (0.0, 1.0)})
INFO = ModelInfo(conditions=SPEC, schedule=ScheduleConfig(), latent_shape=LATENT, latent_scale=0.5,
                 affine=np.diag([4.0, 4.0, 4.0, 1.0]), voxel_volume_ml=0.064)


def _template() -> TemplateMaps:
    d, h, w = np.meshgrid(*[np.linspace(-1, 1, s) for s in GRID], indexing="ij")
    t1 = np.clip(1.0 - (d**2 + h**2 + w**2), 0, 1).astype(np.float32)
    vent = (d**2 / 0.1 + h**2 / 0.2 + w**2 / 0.1 < 1).astype(np.float32)
    return TemplateMaps(t1=t1, ventricle_prob=vent)


class FakeEngines:
    """Deterministic, row-independent engines (only + - * so results cannot depend on batch layout).

    denoise: v = 0.3 * x - 0.2 * (condition . w) - 0.1 * mask (per row); decode: a smooth field linear in
    the latent mean per channel; warp: trilinear, border padding (scipy, order 1, mode nearest).
    Records every call.
    """

    name = "fake"

    def __init__(self):
        self.denoise_calls: list[dict] = []
        self.decoded: list[np.ndarray] = []

    def denoise(self, latents, timesteps, condition, condition_mask):
        self.denoise_calls.append({"latents": latents.copy(), "timesteps": timesteps.copy(),
                                   "condition": condition.copy(), "condition_mask": condition_mask.copy()})
        assert latents.dtype == np.float32 and timesteps.dtype == np.int64
        shift = (condition[:, 0] * 0.7 + condition[:, 1] * 0.3 + condition_mask[:, 0] * 0.1)
        return (0.3 * latents - 0.2 * shift[:, None, None, None, None]).astype(np.float32)

    def decode_dvf(self, latents):
        n = latents.shape[0]
        coords = np.meshgrid(*[np.linspace(0, 1, s, dtype=np.float32) for s in GRID], indexing="ij")
        means = latents.reshape(n, latents.shape[1], -1).mean(-1)  # (N, C)
        dvf = np.zeros((n, 3, *GRID), np.float32)
        for k in range(3):
            dvf[:, k] = means[:, k % latents.shape[1], None, None, None] * coords[(k + 1) % 3] * 2.0
        self.decoded.append(dvf.copy())
        return dvf

    def warp(self, image, dvf):
        base = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in GRID], indexing="ij")
        out = np.empty_like(image)
        for b in range(image.shape[0]):
            coords = np.stack([base[k] + dvf[b, k] for k in range(3)])
            for c in range(image.shape[1]):
                out[b, c] = map_coordinates(image[b, c], coords, order=1, mode="nearest")
        return out


def _manual_loop(engines, cond_row: np.ndarray, seed: int, sample: int, steps: int, sampler: str) -> np.ndarray:
    """The reference: one sample of one condition, looped by hand with the documented noise scheme."""
    schedule = make_sampler(sampler, INFO.schedule, steps)
    x = initial_noise(seed, sample, LATENT)[None]
    for i, t in enumerate(schedule.timesteps):
        out = engines.denoise(x, np.array([t], np.int64), cond_row[None].astype(np.float32),
                              np.ones((1, 1), np.float32))
        noise = step_noise(seed, sample, i, LATENT)[None] if schedule.needs_noise(int(t)) else None
        x = schedule.step(out, int(t), x, noise=noise).prev_sample.astype(np.float32)
    return engines.decode_dvf((x / INFO.latent_scale).astype(np.float32))[0]


def test_noise_depends_only_on_seed_and_sample():
    template = _template()
    alone = generate(FakeEngines(), INFO, template, {"age": 70, "sex": "F"}, steps=4, seed=3)
    listed = generate(FakeEngines(), INFO, template, {"age": [50, 70, 80], "sex": "F"}, steps=4, seed=3)
    assert [r.condition["age"] for r in listed] == [50.0, 70.0, 80.0]
    np.testing.assert_array_equal(alone[0].dvf, listed[1].dvf)
    np.testing.assert_array_equal(alone[0].atlas, listed[1].atlas)
    np.testing.assert_array_equal(alone[0].jacobian, listed[1].jacobian)
    assert alone[0].ventricle_volume_ml == listed[1].ventricle_volume_ml
    # Common random numbers: every row of the batch starts from the same z_T ...
    engines = FakeEngines()
    generate(engines, INFO, template, {"age": [50, 70, 80], "sex": "F"}, steps=4, seed=3)
    first = engines.denoise_calls[0]["latents"]
    np.testing.assert_array_equal(first[0], initial_noise(3, 0, LATENT))
    np.testing.assert_array_equal(first[0], first[2])
    # ... so the ages differ only through the condition, and another seed changes the atlas.
    assert not np.array_equal(listed[0].dvf, listed[2].dvf)
    other = generate(FakeEngines(), INFO, template, {"age": 70, "sex": "F"}, steps=4, seed=4)
    assert not np.array_equal(other[0].dvf, alone[0].dvf)


def test_samples_average_the_per_sample_dvfs():
    template = _template()
    conditions = {"age": [60, 75], "sex": ["M", "F"]}
    engines = FakeEngines()
    three = generate(engines, INFO, template, conditions, steps=5, seed=1, samples=3)
    decoded = engines.decoded[0]  # rows s * M + i: sample s of condition i
    assert decoded.shape == (6, 3, *GRID)
    cond = SPEC.normalise(conditions)
    for i, result in enumerate(three):
        assert result.samples == 3
        per_sample = [_manual_loop(FakeEngines(), cond[i], seed=1, sample=s, steps=5, sampler="ddim")
                      for s in range(3)]
        for s in range(3):  # sample s of the batch is the hand-made loop started from initial_noise(1, s)
            np.testing.assert_allclose(decoded[s * 2 + i], per_sample[s], rtol=0, atol=1e-6)
        np.testing.assert_allclose(result.dvf, np.mean(per_sample, axis=0), rtol=0, atol=1e-6)
        assert np.abs(per_sample[0] - per_sample[1]).max() > 1e-3  # the average is not trivial
    # samples=1 is the first of those samples
    one = generate(FakeEngines(), INFO, template, conditions, steps=5, seed=1, samples=1)
    for i in range(2):
        np.testing.assert_array_equal(one[i].dvf, decoded[i])


def test_decoding_in_chunks_gives_the_same_atlases():
    template = _template()
    conditions = {"age": [50, 60, 75], "sex": ["M", "F", "F"]}
    whole_engines, chunked_engines = FakeEngines(), FakeEngines()
    whole = generate(whole_engines, INFO, template, conditions, steps=4, seed=2, samples=3, decode_batch=9)
    chunked = generate(chunked_engines, INFO, template, conditions, steps=4, seed=2, samples=3, decode_batch=2)
    assert [len(d) for d in whole_engines.decoded] == [9]
    assert [len(d) for d in chunked_engines.decoded] == [2, 2, 2, 2, 1]  # 9 latents, the last chunk short
    np.testing.assert_array_equal(np.concatenate(chunked_engines.decoded), whole_engines.decoded[0])
    for a, b in zip(whole, chunked):
        np.testing.assert_allclose(a.dvf, b.dvf, rtol=0, atol=1e-6)
        np.testing.assert_allclose(a.atlas, b.atlas, rtol=0, atol=1e-5)
        assert a.ventricle_volume_ml == pytest.approx(b.ventricle_volume_ml, rel=1e-6)
    assert np.abs(whole[0].dvf - whole[2].dvf).max() > 1e-3  # the conditions' atlases differ: rows were not mixed
    with pytest.raises(ValueError, match="decode_batch"):
        generate(FakeEngines(), INFO, template, conditions, steps=2, decode_batch=0)


def test_guidance_doubles_the_denoiser_batch():
    template = _template()
    plain, cfg = FakeEngines(), FakeEngines()
    a = generate(plain, INFO, template, {"age": [50, 70], "sex": "M"}, steps=3, guidance=1.0)
    b = generate(cfg, INFO, template, {"age": [50, 70], "sex": "M"}, steps=3, guidance=2.5)
    assert len(plain.denoise_calls) == len(cfg.denoise_calls) == 3
    for call in plain.denoise_calls:
        assert call["latents"].shape[0] == 2
        np.testing.assert_array_equal(call["condition_mask"], np.ones((2, 1), np.float32))
    for call in cfg.denoise_calls:
        assert call["latents"].shape[0] == 4
        np.testing.assert_array_equal(call["condition_mask"][:, 0], [1, 1, 0, 0])
        np.testing.assert_array_equal(call["latents"][:2], call["latents"][2:])
        np.testing.assert_array_equal(call["condition"][:2], call["condition"][2:])
    # The first step's guided output is uncond + 2.5 (cond - uncond) of the fake denoiser.
    first = cfg.denoise_calls[0]
    out = FakeEngines().denoise(first["latents"], first["timesteps"], first["condition"], first["condition_mask"])
    step0 = make_sampler("ddim", INFO.schedule, 3)
    t0 = int(step0.timesteps[0])
    expected = step0.step(guided(out[:2], out[2:], 2.5), t0, first["latents"][:2]).prev_sample
    np.testing.assert_allclose(cfg.denoise_calls[1]["latents"][:2], expected, atol=1e-6)
    assert b[0].guidance == 2.5 and not np.array_equal(a[0].dvf, b[0].dvf)


def test_ddpm_uses_the_step_noise():
    template = _template()
    cond = SPEC.normalise({"age": 70, "sex": "F"})[0]
    result = generate(FakeEngines(), INFO, template, {"age": 70, "sex": "F"}, steps=4, sampler="ddpm", seed=2)[0]
    expected = _manual_loop(FakeEngines(), cond, seed=2, sample=0, steps=4, sampler="ddpm")
    np.testing.assert_allclose(result.dvf, expected, rtol=0, atol=1e-6)
    # Without the step noise (same z_T, same model) the loop lands elsewhere: the noise is really added.
    schedule = make_sampler("ddpm", INFO.schedule, 4)
    engines = FakeEngines()
    x = initial_noise(2, 0, LATENT)[None]
    for t in schedule.timesteps:
        out = engines.denoise(x, np.array([t], np.int64), cond[None], np.ones((1, 1), np.float32))
        x = schedule.step(out, int(t), x, noise=np.zeros_like(x)).prev_sample.astype(np.float32)
    silent = engines.decode_dvf(x / INFO.latent_scale)[0]
    assert np.abs(silent - result.dvf).max() > 1e-3
    # DDIM (eta 0) is deterministic given z_T: it never draws step noise.
    assert not make_sampler("ddim", INFO.schedule, 4).needs_noise(999)


def test_result_fields_and_measurements():
    template = _template()
    progress = []
    results = generate(FakeEngines(), INFO, template, {"age": [60, 70], "sex": "F"}, steps=3, seed=5,
                       progress=lambda done, total: progress.append((done, total)))
    assert progress == [(1, 3), (2, 3), (3, 3)]
    r = results[1]
    assert r.condition == {"age": 70.0, "sex": 0.0}
    assert (r.seed, r.steps, r.sampler, r.samples, r.guidance, r.backend) == (5, 3, "ddim", 1, 1.0, "fake")
    assert r.atlas.shape == r.jacobian.shape == GRID and r.dvf.shape == (3, *GRID)
    assert set(r.timings_s) == {"denoise", "decode", "warp", "jacobian"}
    warped_vent = FakeEngines().warp(template.ventricle_prob[None, None], r.dvf[None])[0, 0]
    assert r.ventricle_volume_ml == pytest.approx(float(warped_vent.sum()) * INFO.voxel_volume_ml, rel=1e-6)


def test_out_of_range_warns_and_bad_values_raise():
    template = _template()
    with pytest.warns(ExtrapolationWarning, match="age=150"):
        generate(FakeEngines(), INFO, template, {"age": 150, "sex": "F"}, steps=2)
    with pytest.raises(ValueError, match="seventy"):
        generate(FakeEngines(), INFO, template, {"age": "seventy", "sex": "F"}, steps=2)
    with pytest.raises(ValueError, match="sex"):
        generate(FakeEngines(), INFO, template, {"age": 70}, steps=2)
    with pytest.raises(ValueError, match="samples"):
        generate(FakeEngines(), INFO, template, {"age": 70, "sex": "F"}, steps=2, samples=0)
