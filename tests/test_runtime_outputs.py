"""``diffdef_runtime.outputs.write_result``: the files of one atlas, their affines, shapes and values."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from diffdef_runtime.grid import get_grid
from diffdef_runtime.jacobian import jacobian_determinant
from diffdef_runtime.outputs import condition_label, load_record, write_result
from diffdef_runtime.pipeline import AtlasResult

GRID = (10, 14, 12)


def _result(seed=0) -> AtlasResult:
    rng = np.random.default_rng(seed)
    d, h, w = np.meshgrid(*[np.linspace(0, 1, s) for s in GRID], indexing="ij")
    # A smooth, asymmetric field (different per channel) so that an axis mix-up changes the numbers.
    dvf = np.stack([0.8 * np.sin(2 * h) * w, -0.5 * d * d + 0.3 * w, 0.6 * np.cos(3 * d) * h]).astype(np.float32)
    dvf += 0.05 * rng.standard_normal(dvf.shape).astype(np.float32)
    atlas = rng.random(GRID).astype(np.float32)
    return AtlasResult(condition={"age": 70.0, "sex": 0.0}, atlas=atlas, dvf=dvf, jacobian=jacobian_determinant(dvf),
                       ventricle_volume_ml=17.25, seed=seed, steps=20, sampler="ddim", samples=2, guidance=1.0,
                       backend="ort", timings_s={"denoise": 1.5, "decode": 0.5, "warp": 0.1, "jacobian": 0.01})


def test_files_affines_shapes_and_values(tmp_path):
    result = _result()
    affine = get_grid("4mm").affine
    folder = write_result(result, affine, tmp_path, extra={"source": "somewhere"})
    assert folder == tmp_path / "age-70_sex-F"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["atlas.nii.gz", "dvf.nii.gz", "jacobian.nii.gz", "preview.png", "record.json"]

    images = {name: nib.load(str(folder / f"{name}.nii.gz")) for name in ("atlas", "dvf", "jacobian")}
    for name, image in images.items():
        np.testing.assert_array_equal(image.affine, affine, err_msg=name)
        np.testing.assert_array_equal(image.header.get_sform(), affine, err_msg=name)
        assert image.get_data_dtype() == np.float32, name
    assert images["atlas"].shape == GRID and images["jacobian"].shape == GRID
    assert images["dvf"].shape == (*GRID, 1, 3)
    assert images["dvf"].header.get_intent()[0] == "vector"
    np.testing.assert_array_equal(np.asarray(images["atlas"].dataobj), result.atlas)
    dvf_back = np.moveaxis(np.asarray(images["dvf"].dataobj)[:, :, :, 0, :], -1, 0)
    np.testing.assert_array_equal(dvf_back, result.dvf)  # channel k = displacement along axis k, exactly
    np.testing.assert_array_equal(np.asarray(images["jacobian"].dataobj), result.jacobian)

    with Image.open(folder / "preview.png") as png:
        png.load()
        assert png.size[0] == 1200 and png.size[1] > 600  # the figure itself: tests/test_runtime_figures.py

    record = load_record(folder)
    assert record == json.loads((folder / "record.json").read_text())
    assert record["condition"] == {"age": 70.0, "sex": 0.0}
    assert (record["seed"], record["steps"], record["backend"], record["samples"]) == (0, 20, "ort", 2)
    assert record["timings_s"] == result.timings_s
    assert record["ventricle_volume_ml"] == 17.25
    assert record["source"] == "somewhere"
    assert record["folding_ratio"] == pytest.approx(float((result.jacobian <= 0).mean()))
    assert record["jacobian_range"] == pytest.approx([float(result.jacobian.min()), float(result.jacobian.max())])
    assert not list(folder.glob(".*tmp*")), "temporary files left behind"


def test_saved_jacobian_matches_the_torch_implementation(tmp_path):
    torch = pytest.importorskip("torch")
    from diffdef.geometry import jacobian_determinant as torch_jacobian

    result = _result(seed=3)
    folder = write_result(result, np.eye(4), tmp_path)
    saved_dvf = np.moveaxis(np.asarray(nib.load(str(folder / "dvf.nii.gz")).dataobj)[:, :, :, 0, :], -1, 0)
    saved_jac = np.asarray(nib.load(str(folder / "jacobian.nii.gz")).dataobj)
    reference = torch_jacobian(torch.from_numpy(saved_dvf.astype(np.float64))[None])[0, 0].numpy()
    assert np.abs(reference - 1).max() > 0.1  # a field that really deforms
    np.testing.assert_allclose(saved_jac, reference, rtol=0, atol=1e-4)


def test_condition_labels():
    assert condition_label({"age": 70.0}) == "age-70"
    assert condition_label({"age": 70.5, "sex": 1.0}) == "age-70.5_sex-M"
    assert condition_label({"age": 60.0, "ventricle_volume_ml": 25.0}) == "age-60_vent-25"


def test_non_finite_record_values_become_null(tmp_path):
    result = _result()
    result.ventricle_volume_ml = float("nan")
    folder = write_result(result, np.eye(4), tmp_path)
    assert load_record(folder)["ventricle_volume_ml"] is None


def test_chosen_outputs_only_and_uncompressed_niftis(tmp_path):
    from diffdef_runtime.outputs import check_folder, output_names

    result = _result(seed=4)
    folder = write_result(result, np.eye(4), tmp_path, outputs=("jacobian", "atlas"), compress=False, run_id="r1")
    assert sorted(p.name for p in folder.iterdir()) == ["atlas.nii", "jacobian.nii", "record.json"]
    assert (folder / "atlas.nii").read_bytes()[344:348] == b"n+1\x00"  # plain single-file NIfTI, not gzip
    np.testing.assert_array_equal(np.asarray(nib.load(str(folder / "jacobian.nii")).dataobj), result.jacobian)
    assert check_folder(folder) == "r1" and sorted(load_record(folder)["files"]) == ["atlas.nii", "jacobian.nii"]
    with pytest.raises(ValueError, match="outputs must be a non-empty subset"):
        output_names(("atlas", "mesh"))
    with pytest.raises(ValueError, match="outputs must be a non-empty subset"):
        output_names(())


def test_a_failing_writer_leaves_no_folder(tmp_path, monkeypatch):
    from diffdef_runtime import outputs

    def fail(*args, **kwargs):
        raise OSError("preview failed")

    monkeypatch.setattr(outputs, "write_preview", fail)
    with pytest.raises(OSError, match="preview failed"):
        write_result(_result(), np.eye(4), tmp_path, run_id="r2")
    assert list(tmp_path.iterdir()) == []  # neither the condition folder nor its hidden staging
