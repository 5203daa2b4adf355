import numpy as np
import pytest

from diffdef.data.tissues import tissue_masks
from diffdef.evaluate.scores import (CLASSES, atlas_class_masks, dice_per_class, field_figures, ncc, soft_volume_ml,
                                     ssim, template_class_maps)
from diffdef.template import load_template


def _boxes(scheme_ids, shape=(10, 10, 10)):
    """Two label maps: class boxes of 4x4x4 voxels, the second shifted by 1 along D (overlap 3/4)."""
    a = np.zeros(shape, np.int32)
    b = np.zeros(shape, np.int32)
    a[2:6, 2:6, 2:6] = scheme_ids
    b[3:7, 2:6, 2:6] = scheme_ids
    return a, b


@pytest.mark.parametrize("scheme,label", [("diffdef", 4), ("muse", 51)])
def test_dice_per_class_two_boxes(scheme, label):
    a, b = _boxes(label)
    d = dice_per_class(tissue_masks(a, scheme), tissue_masks(b, scheme))
    assert d["lateral_ventricles"] == pytest.approx(2 * 48 / 128)  # 48 shared of 64 + 64
    assert d["ventricles"] == pytest.approx(0.75) and d["csf"] == pytest.approx(0.75)
    assert d["gm"] == 1.0 and d["wm"] == 1.0  # both empty


def test_dice_muse_gm_wm_classes():
    a, b = _boxes(0)
    a[2:6, 2:6, 2:6], b[2:6, 2:6, 6:8] = 40, 40  # WM boxes with no overlap
    a[0, 0, 0] = b[0, 0, 0] = 100  # one GM voxel in both
    d = dice_per_class(tissue_masks(a, "muse"), tissue_masks(b, "muse"))
    assert d["wm"] == 0.0 and d["gm"] == 1.0


def test_zero_dvf_reproduces_template_masks_and_shift_gives_shifted_mask():
    t = load_template("4mm")
    maps = template_class_maps(t.labels)
    zero = np.zeros((3, *t.t1.shape), np.float32)
    masks = atlas_class_masks(maps, zero)
    truth = tissue_masks(t.labels, "diffdef")
    for c in CLASSES:
        np.testing.assert_array_equal(masks[c], truth[c])
    assert all(v == 1.0 for v in dice_per_class(masks, truth).values())
    shift = zero.copy()
    shift[0] = 2.0  # warped(x) = template(x + 2 along D)
    moved = atlas_class_masks(maps, shift)["lateral_ventricles"]
    expected = np.roll(truth["lateral_ventricles"], -2, axis=0)
    np.testing.assert_array_equal(moved, expected)  # ventricles are far from the border
    assert soft_volume_ml(t.ventricle_prob, zero, t.grid.voxel_volume_ml) == pytest.approx(
        float(t.ventricle_prob.sum()) * t.grid.voxel_volume_ml, rel=1e-5)


def test_field_figures_known_fields():
    shape = (12, 12, 12)
    zero = np.zeros((3, *shape), np.float32)
    assert field_figures(zero, 4.0) == {"folding_pct": 0.0, "grad_jac": 0.0, "disp_mm": 0.0}
    shift = zero.copy()
    shift[1] = 2.0
    mask = np.zeros(shape, bool)
    mask[3:9, 3:9, 3:9] = True
    f = field_figures(shift, 4.0, mask)
    assert f["disp_mm"] == pytest.approx(8.0) and f["folding_pct"] == 0.0 and f["grad_jac"] == pytest.approx(0.0)
    fold = zero.copy()
    fold[0] = -2.0 * np.arange(12, dtype=np.float32)[:, None, None]  # du/dx = -2: J = -1 everywhere
    assert field_figures(fold, 1.0)["folding_pct"] == pytest.approx(100.0)


def test_ncc_and_ssim():
    rng = np.random.default_rng(0)
    a = rng.random((16, 16, 16)).astype(np.float32)
    mask = np.zeros(a.shape, bool)
    mask[4:12, 4:12, 4:12] = True
    assert ncc(a, 2 * a + 1, mask) == pytest.approx(1.0)
    assert ncc(a, -a, mask) == pytest.approx(-1.0)
    assert ssim(a, a, mask) == pytest.approx(1.0, abs=1e-5)
    assert ssim(a, rng.random(a.shape).astype(np.float32), mask) < 0.5
