import numpy as np
import pytest

from diffdef.evaluate.baselines import LinearAverage, linear_average, select_window


def test_window_rule_and_widening():
    ages = [20, 24, 26, 40, 41, 60]
    w = select_window(ages, 25, window=5)
    assert w.indices == (0, 1, 2) and not w.widened and w.window == 5
    w = select_window(ages, 40, window=5)  # only 40 and 41 within 5 years: widen to the 3rd nearest (26 -> 14)
    assert w.widened and w.window == pytest.approx(14) and w.indices == (2, 3, 4)
    w = select_window(ages, 50, window=5)  # nearest: 41 (9), 60 (10), 40 (10): ties at the 3rd distance are all in
    assert w.widened and w.window == pytest.approx(10) and w.indices == (3, 4, 5)
    assert select_window([30, 31], 80, window=5).indices == (0, 1)  # fewer than 3 subjects at all: all of them


def test_mean_image_and_majority_masks_known():
    images = [np.full((2, 2, 2), v, np.float32) for v in (1.0, 2.0, 6.0)]
    a = np.zeros((2, 2, 2), bool)
    b, c = a.copy(), a.copy()
    a[0, 0, 0] = b[0, 0, 0] = True  # 2/3 -> in
    c[1, 1, 1] = True  # 1/3 -> out
    a[0, 1, 0] = True  # 1/3 -> out
    masks = [{"csf": m} for m in (a, b, c)]
    mean, major = linear_average(images, masks, classes=("csf",))
    np.testing.assert_allclose(mean, 3.0)
    expected = np.zeros((2, 2, 2), bool)
    expected[0, 0, 0] = True
    np.testing.assert_array_equal(major["csf"], expected)
    # exactly half counts as the majority (fraction >= 0.5)
    _, major2 = linear_average(images[:2], [{"csf": a}, {"csf": c}], classes=("csf",))
    assert major2["csf"][0, 0, 0] and major2["csf"][1, 1, 1]


def test_linear_average_object_and_volume():
    imgs = [np.full((2, 2, 2), v, np.float32) for v in (0.0, 1.0, 2.0, 9.0)]
    vent = [np.ones((2, 2, 2), bool)] * 3 + [np.zeros((2, 2, 2), bool)]
    masks = [{"lateral_ventricles": v} for v in vent]
    lin = LinearAverage([20, 21, 22, 80], imgs, [{**m, "ventricles": m["lateral_ventricles"], "csf": m["lateral_ventricles"],
                                                   "gm": m["lateral_ventricles"], "wm": m["lateral_ventricles"],
                                                   "brain": m["lateral_ventricles"]} for m in masks],
                        window=5, voxel_volume_ml=0.5)
    chosen, image, _ = lin.at(21)
    assert chosen.indices == (0, 1, 2)
    np.testing.assert_allclose(image, 1.0)
    assert lin.ventricle_volume_ml(21) == pytest.approx(8 * 0.5)
    assert lin.at(80)[0].widened and lin.ventricle_volume_ml(80) == pytest.approx(8 * 0.5 * 2 / 3)  # 80, 22, 21: mean volume
    assert lin.at(80)[2]["lateral_ventricles"].all()  # 2 of 3 in the class: majority
