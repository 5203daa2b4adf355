"""The ONNX Runtime backend on an exported tiny bundle: parity with the PyTorch modules it was exported from,
determinism, fp16, checksums, and ``diffdef-run``'s handling of bad input.

The tiny checkpoint's zero-initialised layers (MONAI's UNet output conv, attention projections, the DVF head)
are randomised by ``make_untrained_checkpoint``, so these parity tests exercise every layer; the first test
checks that (the two ages give different DVFs).

Measured (tiny untrained model, 4mm grid, DVFs up to ~7 voxels, ages 40 and 70, seed 0, 5 and 20 DDIM steps):
fp32 ONNX Runtime vs PyTorch max |dDVF| 1.4e-5 voxels, max |d atlas| 6e-6 (bounds 1e-3 voxels and 1e-3);
fp16 bundle vs PyTorch fp32 max |dDVF| 0.012 voxels, max |d atlas| 0.0055, ventricle volume within 0.01 %
(bounds 0.05 voxels and 0.02).
"""

from __future__ import annotations

import shutil
import warnings

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from diffdef_runtime.backends import open_model
from diffdef_runtime.bundle import Bundle, BundleError
from diffdef_runtime.cli import main as cli
from diffdef_runtime.conditions import ExtrapolationWarning
from diffdef_runtime.pipeline import generate
from file_helpers import flip_middle_byte

CONDITIONS = {"age": [40, 70], "sex": "F"}
FP32_DVF_ATOL = 1e-3  # voxels
FP16_DVF_ATOL = 5e-2  # voxels
ATLAS_ATOL = 1e-3     # intensities in [0, 1]


def _generate(model, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExtrapolationWarning)  # age 40 is below the trained 45..85
        return generate(model.engines, model.info, model.template, CONDITIONS, **{"steps": 5, "seed": 0, **kwargs})


@pytest.fixture(scope="module")
def torch_results(tiny_bundle):
    return _generate(open_model("torch", bundle=tiny_bundle))


@pytest.fixture(scope="module")
def ort_model(tiny_bundle):
    return open_model("ort", bundle=tiny_bundle)


def test_ort_matches_torch(tiny_bundle, torch_results):
    results = _generate(open_model("ort", bundle=tiny_bundle))
    assert [r.backend for r in results] == ["ort", "ort"]
    for ort_r, torch_r in zip(results, torch_results):
        assert ort_r.condition == torch_r.condition
        dvf_err = float(np.abs(ort_r.dvf - torch_r.dvf).max())
        assert np.abs(torch_r.dvf).max() > 0.1, "the tiny model must produce a real deformation"
        assert dvf_err < FP32_DVF_ATOL, f"ORT vs torch DVF max abs diff {dvf_err:.2e} voxels"
        np.testing.assert_allclose(ort_r.atlas, torch_r.atlas, rtol=0, atol=ATLAS_ATOL)
        np.testing.assert_allclose(ort_r.jacobian, torch_r.jacobian, rtol=0, atol=1e-2)
        assert ort_r.ventricle_volume_ml == pytest.approx(torch_r.ventricle_volume_ml, rel=1e-3)
    # The two ages really differ: the condition reaches a non-zero denoiser through the exported graph.
    assert np.abs(torch_results[0].dvf - torch_results[1].dvf).max() > 0.05


def test_fp16_bundle_runs_and_agrees(tiny_bundle_fp16, torch_results):
    model = open_model("ort", bundle=tiny_bundle_fp16)
    assert Bundle.open(tiny_bundle_fp16).precision in ("fp16", "float16")
    for r16, r32 in zip(_generate(model), torch_results):
        err = float(np.abs(r16.dvf - r32.dvf).max())
        assert np.isfinite(r16.dvf).all() and err < FP16_DVF_ATOL, f"fp16 vs torch DVF max abs diff {err:.2e}"
        np.testing.assert_allclose(r16.atlas, r32.atlas, rtol=0, atol=2e-2)


def test_same_seed_gives_identical_files(tiny_bundle, tmp_path):
    runner = CliRunner()
    for name in ("a", "b"):
        result = runner.invoke(cli, ["--bundle", str(tiny_bundle), "--age", "70", "--sex", "F", "--steps", "3",
                                     "--seed", "7", "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
    for file in ("atlas.nii.gz", "dvf.nii.gz", "jacobian.nii.gz"):
        a = np.asarray(nib.load(str(tmp_path / "a" / "age-70_sex-F" / file)).dataobj)
        b = np.asarray(nib.load(str(tmp_path / "b" / "age-70_sex-F" / file)).dataobj)
        assert a.dtype == b.dtype == np.float32
        np.testing.assert_array_equal(a, b, err_msg=file)
    other = runner.invoke(cli, ["--bundle", str(tiny_bundle), "--age", "70", "--sex", "F", "--steps", "3",
                                "--seed", "8", "--out", str(tmp_path / "c")])
    assert other.exit_code == 0, other.output
    c = np.asarray(nib.load(str(tmp_path / "c" / "age-70_sex-F" / "dvf.nii.gz")).dataobj)
    assert not np.array_equal(c, np.asarray(nib.load(str(tmp_path / "a" / "age-70_sex-F" / "dvf.nii.gz")).dataobj))


def test_io_binding_reuses_buffers_and_validates_inputs(ort_model):
    engines, info = ort_model.engines, ort_model.info
    rng = np.random.default_rng(0)
    latents = rng.standard_normal((2, *info.latent_shape)).astype(np.float32)
    t = np.array([999, 999], np.int64)
    cond = np.full((2, 2), 0.5, np.float32)
    mask = np.ones((2, 1), np.float32)
    first = engines.denoise(latents, t, cond, mask)
    first_copy = first.copy()
    second = engines.denoise(latents, t, cond, mask)
    assert second is first, "the output buffer of a batch size is allocated once and reused"
    np.testing.assert_array_equal(second, first_copy)
    single = engines.denoise(latents[:1], t[:1], cond[:1], mask[:1])
    assert single is not first and single.shape[0] == 1
    np.testing.assert_allclose(single[0], first_copy[0], atol=1e-5)  # batching does not change a row

    with pytest.raises(ValueError, match="'latents'.*float64"):
        engines.denoise(latents.astype(np.float64), t, cond, mask)
    with pytest.raises(ValueError, match="'timesteps'.*int32"):
        engines.denoise(latents, t.astype(np.int32), cond, mask)
    with pytest.raises(ValueError, match="'condition'"):
        engines.denoise(latents, t, np.zeros((2, 3), np.float32), mask)
    with pytest.raises(ValueError, match="'condition_mask'.*batch"):
        engines.denoise(latents, t, cond, np.ones((3, 1), np.float32))
    with pytest.raises(ValueError, match="dvf_decoder input 'latents'"):
        engines.decode_dvf(latents[:, :, :-1])


def test_cuda_without_onnxruntime_gpu_is_a_clear_error(tiny_bundle, tmp_path):
    from diffdef_runtime.backends.ort import select_providers

    bundle = Bundle.open(tiny_bundle)
    with pytest.raises(RuntimeError, match="onnxruntime-gpu"):
        select_providers(bundle, "cuda", available=["CPUExecutionProvider"])
    chosen = select_providers(bundle, "cuda:1", available=["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                                            "CPUExecutionProvider"])
    assert [p if isinstance(p, str) else p[0] for p in chosen] == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert chosen[1][1]["device_id"] == 1
    assert select_providers(bundle, "cpu") == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="gpu0"):
        select_providers(bundle, "gpu0")
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        result = CliRunner().invoke(cli, ["--bundle", str(tiny_bundle), "--age", "70", "--sex", "F",
                                          "--device", "cuda", "--out", str(tmp_path / "out")])
        assert result.exit_code != 0 and "onnxruntime-gpu" in result.output


def test_checksum_mismatch_refuses(tiny_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    Bundle.open(copy)  # an intact copy opens
    onnx_file = copy / "unet.onnx"
    flip_middle_byte(onnx_file, 0x01)
    with pytest.raises(BundleError, match="unet.onnx"):
        Bundle.open(copy)
    result = CliRunner().invoke(cli, ["--bundle", str(copy), "--age", "70", "--sex", "F", "--out",
                                      str(tmp_path / "out")])
    assert result.exit_code != 0
    assert "checksum mismatch" in result.output and "unet.onnx" in result.output
    assert not (tmp_path / "out").exists()


def test_cli_bad_input(tiny_bundle, tmp_path):
    runner = CliRunner()
    base = ["--bundle", str(tiny_bundle), "--sex", "F", "--steps", "2", "--out", str(tmp_path / "out")]

    result = runner.invoke(cli, [*base, "--age", "seventy"])
    assert result.exit_code != 0 and "seventy" in result.output and "Traceback" not in result.output

    missing = tmp_path / "no_such_bundle"
    result = runner.invoke(cli, ["--bundle", str(missing), "--age", "70", "--sex", "F", "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and str(missing) in result.output

    not_a_bundle = tmp_path / "empty"
    not_a_bundle.mkdir()
    result = runner.invoke(cli, ["--bundle", str(not_a_bundle), "--age", "70", "--sex", "F", "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and "manifest.json" in result.output

    result = runner.invoke(cli, ["--bundle", str(tiny_bundle), "--age", "70", "--steps", "2", "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and "sex" in result.output  # the model needs sex too

    result = runner.invoke(cli, [*base, "--age", "110"])  # possible, but far outside the trained 45..85
    assert result.exit_code == 0, result.output
    assert "warning" in result.output and "age=110" in result.output and "trained range" in result.output
    assert (tmp_path / "out" / "age-110_sex-F" / "atlas.nii.gz").is_file()


def test_cli_age_range_writes_one_folder_per_age(tiny_bundle, tmp_path):
    out = tmp_path / "atlases"
    result = CliRunner().invoke(cli, ["--bundle", str(tiny_bundle), "--age", "50:70:10", "--sex", "M",
                                      "--steps", "2", "--samples", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == ["age-50_sex-M", "age-60_sex-M", "age-70_sex-M"]
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["index.html", "summary.png", "volumes.png"]
    assert all(f"{folder}/preview.png" in (out / "index.html").read_text() for folder in folders)
    for folder in folders:
        assert {p.name for p in (out / folder).iterdir()} == {"atlas.nii.gz", "dvf.nii.gz", "jacobian.nii.gz",
                                                             "preview.png", "record.json"}


def test_api(tiny_bundle, tmp_path):
    from diffdef_runtime.api import AtlasGenerator

    gen = AtlasGenerator(bundle=tiny_bundle)
    assert gen.condition_names == ("age", "sex")
    assert gen.trained_range["age"] == (45.0, 85.0)
    assert gen.grid_shape == (40, 56, 40)
    results = gen.generate(age=[60, 70], sex="F", steps=3, seed=1)
    alone = gen.generate(age=70, sex="F", steps=3, seed=1)
    # Same noise alone or in a list; the engine may round a row differently in another batch size.
    np.testing.assert_allclose(alone[0].dvf, results[1].dvf, rtol=0, atol=1e-4)
    folders = gen.save(results, tmp_path)
    assert [f.name for f in folders] == ["age-60_sex-F", "age-70_sex-F"]
    assert (tmp_path / "summary.png").is_file() and (tmp_path / "index.html").is_file()
    assert gen.template_ventricle_ml == pytest.approx(float(gen.model.template.ventricle_prob.sum()) * 0.064)
    gen.save(alone, tmp_path / "one")  # a single atlas: its folder only
    assert [p.name for p in (tmp_path / "one").iterdir()] == ["age-70_sex-F"]
    via_string = gen.generate(age="60:70:10", sex="F", steps=3, seed=1)
    np.testing.assert_array_equal(via_string[0].atlas, results[0].atlas)
    with pytest.raises(ValueError, match="not found"):
        AtlasGenerator(bundle=tmp_path / "nope")
    with pytest.raises(ValueError, match="--backend torch"):
        AtlasGenerator(checkpoint=tiny_bundle / "checkpoint", backend="ort")


def test_cli_without_bundle_explains_how_to_make_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no runs/default/bundle here
    result = CliRunner().invoke(cli, ["--age", "70"])
    assert result.exit_code != 0
    assert "runs/default/bundle" in result.output and "diffdef-export" in result.output
    result = CliRunner().invoke(cli, ["--sex", "F"])  # no age, still a condition: the bundle error comes first
    assert result.exit_code != 0 and "runs/default/bundle" in result.output
    result = CliRunner().invoke(cli, [])
    assert result.exit_code != 0 and "--age 70" in result.output


def test_only_the_unet_session_spins_between_runs():
    # the decoder's and the warp's threads, run once per atlas, must not spin while the next component runs
    import onnxruntime

    from diffdef_runtime.backends.ort import session_options

    key = "session.intra_op.allow_spinning"
    assert session_options(onnxruntime, "dvf_decoder").get_session_config_entry(key) == "0"
    assert session_options(onnxruntime, "warp").get_session_config_entry(key) == "0"
    with pytest.raises(Exception):  # not set for the UNet: ONNX Runtime's default, spinning
        session_options(onnxruntime, "unet").get_session_config_entry(key)
