import numpy as np
import pytest

from diffdef.data.tissues import TISSUES, label_ids, tissue_masks, tissue_volumes_ml


def test_muse_classes_nest_and_exclude():
    labels = np.array([0, 1, 4, 11, 46, 49, 51, 52, 40, 47, 23, 207, 208])
    m = tissue_masks(labels, "muse")
    assert m["lateral_ventricles"].tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0]
    assert m["ventricles"].tolist() == [0, 0, 1, 1, 0, 1, 1, 1, 0, 0, 0, 0, 0]
    assert m["csf"].tolist() == [0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    assert m["wm"].tolist() == [0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]
    assert m["gm"].tolist() == [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0]
    assert m["brain"].tolist() == [0] + [1] * 12


def test_muse_gm_and_wm_do_not_overlap_csf():
    ids = label_ids("muse")
    assert not set(ids["gm"]) & set(ids["wm"])
    assert not (set(ids["gm"]) | set(ids["wm"])) & set(ids["csf"])
    assert set(ids["lateral_ventricles"]) <= set(ids["ventricles"]) <= set(ids["csf"])


def test_diffdef_scheme_and_volumes():
    labels = np.zeros((4, 4, 4), np.uint8)
    labels[0] = 1
    labels[1] = 2
    labels[2, :2] = 3
    labels[3, 0, 0] = 4
    vol = tissue_volumes_ml(labels, "diffdef", voxel_volume_ml=8e-3)
    assert vol["lateral_ventricles"] == pytest.approx(8e-3)
    assert vol["csf"] == pytest.approx(17 * 8e-3)
    assert vol["gm"] == pytest.approx(16 * 8e-3)
    assert vol["wm"] == pytest.approx(8 * 8e-3)
    assert vol["brain"] == pytest.approx(41 * 8e-3)
    assert set(TISSUES) < set(vol)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown label scheme 'fs'"):
        tissue_masks(np.zeros(3, int), "fs")
    with pytest.raises(ValueError, match="integer ids"):
        tissue_masks(np.array([0.5, 1.0]), "muse")
    assert tissue_masks(np.array([1.0, 51.0]), "muse")["lateral_ventricles"].tolist() == [False, True]
