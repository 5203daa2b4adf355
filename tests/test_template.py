"""The MNI152 template on the DiffDef grids (4 mm for speed; everything is derived at 1 mm)."""

import numpy as np
import pytest
import torch

from diffdef.template import BACKGROUND, CSF, GM, VENTRICLES, WM, load_template
from diffdef_runtime.grid import GRIDS, PAPER_CROP_START


@pytest.fixture(scope="module")
def tpl():
    return load_template("4mm")


def test_shapes_dtypes_affine(tpl):
    grid = GRIDS["4mm"]
    assert tpl.grid is grid or tpl.grid == grid
    np.testing.assert_allclose(tpl.affine, grid.affine)
    for name in ("t1", "gm", "wm", "csf", "ventricle_prob", "sulcal_csf"):
        arr = getattr(tpl, name)
        assert arr.shape == grid.shape and arr.dtype == np.float32, name
        assert arr.min() >= 0.0 and arr.max() <= 1.0 + 1e-6, name
    assert tpl.brain_mask.dtype == bool and tpl.ventricles.dtype == bool
    assert tpl.labels.dtype == np.uint8 and tpl.labels.shape == grid.shape


def test_affine_is_block_centre():
    # A 4 mm voxel centre is the mean of its 4x4x4 paper voxels: paper voxel (1.5, 1.5, 1.5) of block 0.
    paper, coarse = GRIDS["paper"].affine, GRIDS["4mm"].affine
    np.testing.assert_allclose(coarse @ [0, 0, 0, 1], paper @ [1.5, 1.5, 1.5, 1])
    np.testing.assert_allclose(paper[:3, 3], np.array([-98.0, -134.0, -72.0]) + PAPER_CROP_START)


def test_tissue_maps_consistent(tpl):
    total = tpl.gm + tpl.wm + tpl.csf
    assert total.max() <= 1.0 + 1e-5
    # Inside the brain the three tissues add up to one; outside there is nothing.
    np.testing.assert_allclose(total[tpl.brain_mask & (total > 0)].mean(), 1.0, atol=0.05)
    assert np.all(tpl.sulcal_csf <= tpl.csf + 1e-6)
    assert 150 < tpl.volume_ml("sulcal_csf") < 260
    assert 900 < tpl.volume_ml("gm") < 1100


def test_ventricle_volume(tpl):
    soft = tpl.volume_ml("ventricle_prob")
    assert 10.0 < soft < 30.0
    hard = tpl.ventricles.sum() * tpl.grid.voxel_volume_ml
    assert 0.7 * soft < hard < 1.3 * soft
    # deep inside the brain: the ventricles sit near the middle of the left-right axis
    com = np.argwhere(tpl.ventricles).mean(0)
    assert abs(com[0] - (tpl.shape[0] - 1) / 2) < 2


def test_labels(tpl):
    assert set(np.unique(tpl.labels)) <= {BACKGROUND, CSF, GM, WM, VENTRICLES}
    assert np.array_equal(tpl.labels == VENTRICLES, tpl.ventricles)
    assert np.array_equal(tpl.labels != BACKGROUND, tpl.brain_mask | tpl.ventricles)
    wm_vox = tpl.labels == WM
    assert tpl.wm[wm_vox].mean() > 0.6 and tpl.gm[tpl.labels == GM].mean() > 0.5


def test_torch_view(tpl):
    t = tpl.torch("t1")
    assert t.shape == (1, 1, *tpl.shape) and t.dtype == torch.float32
    assert tpl.torch("labels").dtype == torch.uint8
    with pytest.raises(AttributeError):
        tpl.torch("nope")


def test_grids_agree_on_volumes(tpl):
    two = load_template("2mm")
    for name in ("gm", "ventricle_prob", "sulcal_csf"):
        assert two.volume_ml(name) == pytest.approx(tpl.volume_ml(name), rel=1e-4), name
    assert load_template("4mm") is tpl  # cached
