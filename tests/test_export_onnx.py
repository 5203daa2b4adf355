"""ONNX export of a checkpoint: checker, ONNX Runtime parity, dynamic batch, manifest and checksums, grids."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from diffdef.geometry import integrate_svf, warp_image
from diffdef.generate import load_generation_modules
from diffdef.models.registration import upsample_dvf
from diffdef_export import verify
from diffdef_export.bundle_writer import export_bundle
from diffdef_export.errors import ExportError, VerificationError
from diffdef_export.modules import grid_sample_warp, integrate_svf_traceable
from diffdef_export.onnx_export import load_checkpoint, resolve_output_grid
from diffdef_runtime.bundle import TEMPLATE_FILES, Bundle, BundleError, parse_checksums, sha256_file
from diffdef_runtime.grid import get_grid
from diffdef_runtime.interfaces import FORMAT_VERSION, all_interfaces
from file_helpers import flip_middle_byte

FRESH_SEED = 777  # not the tracing seed, not the seed of the export's own verification


def _torch_outputs(bundle: Bundle, name: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
    denoiser, decoder = load_generation_modules(bundle.checkpoint_dir)
    tensors = [torch.from_numpy(v) for v in inputs.values()]
    with torch.no_grad():
        if name == "unet":
            return denoiser(*tensors).numpy()
        if name == "dvf_decoder":
            return upsample_dvf(decoder(*tensors), int(bundle.manifest["dvf_upsample_factor"])).numpy()
        return warp_image(*tensors).numpy()


# ----------------------------------------------------------------------------------------------- torch twins
def test_export_warp_twin_equals_warp_image_on_an_asymmetric_field():
    g = torch.Generator().manual_seed(0)
    image = torch.randn(2, 3, 9, 11, 7, generator=g)
    dvf = 3 * torch.randn(2, 3, 9, 11, 7, generator=g)
    dvf[:, 0] += 2.5  # asymmetric: a shift along D only, beyond the border in places
    assert torch.equal(grid_sample_warp(image, dvf), warp_image(image, dvf))
    assert torch.equal(integrate_svf_traceable(dvf, 5), integrate_svf(dvf, 5))


# ----------------------------------------------------------------------------------------------- fp32 bundle
def test_every_onnx_file_passes_the_checker_and_matches_torch(tiny_bundle):
    bundle = Bundle.open(tiny_bundle)
    rng = np.random.default_rng(FRESH_SEED)
    for name in ("unet", "dvf_decoder", "warp"):
        path = bundle.model_path(name)
        onnx.checker.check_model(str(path))
        interface = bundle.interface(name)
        inputs = interface.sample_inputs(rng, batch=2, channels=2)
        got = verify.session(path).run(None, inputs)[0]
        want = _torch_outputs(bundle, name, inputs)
        max_abs, max_rel = verify.relative_error(got, want)
        print(f"{name}: max abs {max_abs:.2e}, max rel {max_rel:.2e}")
        assert max_rel <= 1e-4, name
        assert np.abs(want).max() > 0.1, f"{name}: trivial reference output"  # the parity test means something


def test_dvf_is_nonzero_and_about_a_voxel(tiny_bundle):
    bundle = Bundle.open(tiny_bundle)
    inputs = bundle.interface("dvf_decoder").sample_inputs(np.random.default_rng(1), batch=1)
    dvf = verify.session(bundle.model_path("dvf_decoder")).run(None, inputs)[0]
    assert 0.3 < dvf.std() < 3.0


@pytest.mark.parametrize("batch", [1, 3])
def test_dynamic_batch_through_onnx_runtime(tiny_bundle, batch):
    bundle = Bundle.open(tiny_bundle)
    rng = np.random.default_rng(batch)
    for name in ("unet", "dvf_decoder", "warp"):
        interface = bundle.interface(name)
        inputs = interface.sample_inputs(rng, batch=batch, channels=batch)
        got = verify.session(bundle.model_path(name)).run(None, inputs)[0]
        assert got.shape == interface.outputs[0].concrete(batch=batch, channels=batch)
        _, max_rel = verify.relative_error(got, _torch_outputs(bundle, name, inputs))
        assert max_rel <= 1e-4, (name, batch)


def test_manifest_is_complete_and_accepted_by_the_runtime(tiny_bundle, tiny_checkpoint):
    bundle = Bundle.open(tiny_bundle)  # verifies every checksum
    m = bundle.manifest
    grid = get_grid("4mm")
    assert m["format_version"] == FORMAT_VERSION and m["precision"] == "fp32"
    assert m["grid"]["name"] == "4mm" and m["grid"]["shape"] == [40, 56, 40]
    np.testing.assert_array_equal(bundle.affine, grid.affine)
    assert m["training_grid"] == "4mm" and m["latent_shape"] == [3, 5, 7, 5]
    model = json.loads((tiny_checkpoint / "model.json").read_text())
    assert m["conditions"] == model["conditions"] and m["schedule"] == model["schedule"]
    assert m["latent_scale"] == model["latent_scale"] and m["sample_steps"] == model["sample_steps"]
    expected = all_interfaces((3, 5, 7, 5), 2, grid.shape)
    for name, interface in expected.items():
        assert bundle.interface(name) == interface
    for key in ("torch", "monai", "onnx", "onnxruntime", "onnxscript", "diffdef", "python"):
        assert m["versions"][key]
    for name in ("unet", "dvf_decoder", "warp", "warp_gather"):
        v = m["verification"][name]
        assert v["max_rel"] <= v["tolerance"] == 1e-4
    assert m["operators"]["unet.onnx"]["Conv"] > 0
    assert m["tensorrt_unsupported"]["warp.onnx"] == ["GridSample"]  # 5-D: TensorRT >= 11.2 only
    assert m["tensorrt_unsupported"]["warp_gather.onnx"] == []
    assert m["tensorrt_unsupported"]["unet.onnx"] == []
    # every file but the manifest is checksummed in it; checksums.sha256 covers those and the manifest too
    on_disk = {p.relative_to(tiny_bundle).as_posix() for p in tiny_bundle.rglob("*") if p.is_file()}
    assert set(m["files"]) == on_disk - {"manifest.json", "checksums.sha256"}
    assert all(m["files"][rel] == sha256_file(tiny_bundle / rel) for rel in m["files"])
    listed = parse_checksums(tiny_bundle / "checksums.sha256")
    assert listed == {**m["files"], "manifest.json": sha256_file(tiny_bundle / "manifest.json")}
    # template maps on the grid, with the grid's affine and the documented dtypes
    maps = bundle.template_maps()
    assert maps.t1.shape == grid.shape and maps.ventricle_prob.shape == grid.shape
    assert bundle.template_labels().dtype == np.uint8 and bundle.template_labels().max() == 4
    import nibabel as nib

    for key, dtype in (("t1", np.float32), ("ventricle_prob", np.float32), ("labels", np.uint8)):
        image = nib.load(str(tiny_bundle / TEMPLATE_FILES[key]))
        assert image.get_data_dtype() == dtype
        np.testing.assert_allclose(image.affine, grid.affine)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_corrupted_file_is_refused_naming_it(tiny_bundle, tmp_path):
    copy = _copy(tiny_bundle, tmp_path / "b")
    path = copy / "dvf_decoder.onnx"
    flip_middle_byte(path)
    with pytest.raises(BundleError, match="dvf_decoder.onnx"):
        Bundle.open(copy)


def test_missing_file_is_refused(tiny_bundle, tmp_path):
    copy = _copy(tiny_bundle, tmp_path / "b")
    (copy / "template_t1.nii.gz").unlink()
    with pytest.raises(BundleError, match="missing.*template_t1.nii.gz"):
        Bundle.open(copy)


# ----------------------------------------------------------------------------------------------- grids
def test_coarser_or_unknown_grid_is_an_error_naming_both():
    with pytest.raises(ExportError, match="paper.*2mm|2mm.*paper") as err:
        resolve_output_grid("paper", "2mm")
    assert "coarser" in str(err.value)
    assert resolve_output_grid("4mm", "paper").factor == 4
    assert resolve_output_grid("2mm", None).factor == 1


def test_finer_grid_gives_the_upsampled_dvf(tiny_checkpoint, tmp_path):
    from diffdef_export.onnx_export import components, export_component, interfaces_for

    checkpoint = load_checkpoint(tiny_checkpoint)
    out = resolve_output_grid(checkpoint.training_grid, "2mm")
    assert out.factor == 2 and out.grid.shape == (80, 112, 80)
    interfaces = interfaces_for(checkpoint, out)
    assert interfaces["warp"].inputs[0].shape[2:] == (80, 112, 80)
    assert interfaces["unet"].inputs[0].shape[1:] == (3, 5, 7, 5)  # the latent stays the training one
    comp = components(checkpoint, out)["dvf_decoder"]
    exported = export_component("dvf_decoder", comp, tmp_path)
    latents = comp.interface.sample_inputs(np.random.default_rng(5), batch=2)
    dvf = verify.session(exported.path).run(None, latents)[0]
    with torch.no_grad():
        coarse = checkpoint.decoder(torch.from_numpy(latents["latents"]))
        want = torch.nn.functional.interpolate(coarse, scale_factor=2, mode="trilinear") * 2  # voxels of 2mm
    assert dvf.shape == (2, 3, 80, 112, 80)
    _, max_rel = verify.relative_error(dvf, want.numpy())
    assert max_rel <= 1e-4


def test_hierarchical_group_norm_equals_group_norm_on_large_offset_groups():
    from diffdef_export.modules import HierarchicalGroupNorm

    norm = torch.nn.GroupNorm(2, 4)
    torch.nn.init.normal_(norm.weight, generator=torch.Generator().manual_seed(0))
    x = 3.0 + 0.5 * torch.randn(2, 4, 12, 10, 9, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(HierarchicalGroupNorm(norm)(x), norm(x), rtol=0, atol=2e-5)


@pytest.mark.parametrize("integration_down,parts", [(1, None), (2, None), (2, "basis")])
def test_diffeomorphic_decoder_export_module_equals_the_decoder(tmp_path, integration_down, parts):
    from diffdef_export.modules import DVFDecoderForExport, DVFDecoderReference, folded_basis_velocities
    from diffdef_export.testing import make_untrained_checkpoint

    ckpt = make_untrained_checkpoint(tmp_path / "c", diffeomorphic=True, integration_steps=4, seed=3,
                                     integration_down=integration_down, parts=parts)
    _, decoder = load_generation_modules(ckpt)
    # a basis-only decoder integrated on its basis grid is exported from folded fields (no full-grid resize)
    assert (folded_basis_velocities(decoder) is not None) == (parts == "basis")
    z = torch.randn(2, 3, 5, 7, 5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for factor in (1, 2):
            got = DVFDecoderForExport(decoder, factor)(z)  # hierarchical GroupNorms: equal to rounding
            want = DVFDecoderReference(decoder, factor)(z)
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5 if parts == "basis" else 1e-4)
            assert float(want.abs().max()) > 0.1
        velocity = decoder.raw_field(z)
        integrated = DVFDecoderForExport(decoder, 1)(z)
    assert float((integrated - velocity).abs().max()) > 1e-3  # the integration did something


@pytest.mark.parametrize("fp16,parts", [(False, "basis"), (True, "basis"), (False, "decoder+basis")])
def test_decoder_of_the_default_preset_kind_exports_within_tolerance(tmp_path, fp16, parts):
    # What the default preset ships: a diffeomorphic field basis integrated on a 2x coarser grid ("basis"); its
    # ONNX graph holds no convolution (no full-resolution pass). "decoder+basis" adds the copied AE decoder.
    import onnx

    from diffdef_export.testing import make_untrained_checkpoint

    ckpt = make_untrained_checkpoint(tmp_path / "c", diffeomorphic=True, integration_down=2, basis_rank=2, seed=5,
                                     parts=parts)
    bundle = Bundle.open(export_bundle(ckpt, tmp_path / "b", fp16=fp16))
    ops = {node.op_type for node in onnx.load(str(bundle.model_path("dvf_decoder"))).graph.node}
    assert ("Conv" in ops) == (parts == "decoder+basis")
    assert ("AveragePool" in ops) == (parts == "decoder+basis")  # the basis alone: folded fields, no pooling
    inputs = bundle.interface("dvf_decoder").sample_inputs(np.random.default_rng(FRESH_SEED), batch=2)
    got = verify.session(bundle.model_path("dvf_decoder")).run(None, inputs)[0]
    want = _torch_outputs(bundle, "dvf_decoder", inputs)
    max_abs, max_rel = verify.relative_error(got, want)
    print(f"fp16={fp16}: max abs {max_abs:.2e}, max rel {max_rel:.2e}")
    assert max_rel <= (1e-2 if fp16 else 1e-4)
    assert np.abs(want).max() > 0.1


def test_failed_verification_leaves_no_bundle(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(verify.TOLERANCES, "fp32", 0.0)
    target = tmp_path / "never"
    with pytest.raises(VerificationError, match=r"unet.*tolerance 0"):
        export_bundle(tiny_checkpoint, target)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # no staging folder left behind


def test_torch_engines_upsample_like_a_finer_grid_bundle(tiny_checkpoint):
    # A bundle exported on a grid finer than training upsamples the DVF inside dvf_decoder.onnx; the torch backend
    # on that bundle must hand the warp a DVF on the same grid (it used to return the training grid's DVF).
    from diffdef.generate import TorchEngines
    from diffdef_runtime.backends.torch_backend import torch_engines_for_bundle

    latents = np.random.default_rng(6).standard_normal((1, 3, 5, 7, 5)).astype(np.float32)
    plain = TorchEngines.from_checkpoint(tiny_checkpoint).decode_dvf(latents)
    finer = TorchEngines.from_checkpoint(tiny_checkpoint, dvf_upsample_factor=2).decode_dvf(latents)
    assert plain.shape == (1, 3, 40, 56, 40) and finer.shape == (1, 3, 80, 112, 80)
    want = torch.nn.functional.interpolate(torch.from_numpy(plain), scale_factor=2, mode="trilinear") * 2
    np.testing.assert_allclose(finer, want.numpy(), rtol=0, atol=1e-5)

    class FakeBundle:
        checkpoint_dir = tiny_checkpoint
        manifest = {"dvf_upsample_factor": 2}

    assert torch_engines_for_bundle(FakeBundle()).decode_dvf(latents).shape == (1, 3, 80, 112, 80)
