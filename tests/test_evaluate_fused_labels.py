"""The template's class maps fused from training subjects' label maps (diffdef.evaluate.fused_labels)."""

import numpy as np
import pytest
import torch

from diffdef.data.tissues import tissue_masks
from diffdef.evaluate.fused_labels import fused_class_maps
from diffdef.evaluate.scores import CLASSES, template_class_maps
from diffdef.geometry import dice
from diffdef.template import load_template


@pytest.fixture(scope="module")
def template_labels():
    return load_template("4mm").labels


def test_subjects_labelled_like_the_template_fuse_to_the_template_maps(template_labels):
    fused = fused_class_maps(template_labels, [template_labels, template_labels.copy()], "diffdef")
    assert fused.shape == (len(CLASSES), *template_labels.shape) and fused.dtype == np.float32
    np.testing.assert_array_equal(fused, template_class_maps(template_labels, "diffdef"))


def test_each_class_map_is_the_fraction_of_subjects_and_its_majority_is_kept(template_labels):
    # The third subject has no lateral ventricles (relabelled as white matter): 2 of 3 subjects have them.
    wm_id = next(int(v) for v in np.unique(template_labels) if tissue_masks(np.full((1,), v), "diffdef")["wm"][0])
    lv = tissue_masks(template_labels, "diffdef")["lateral_ventricles"]
    without = template_labels.copy()
    without[lv] = wm_id
    logged = []
    fused = fused_class_maps(template_labels, [template_labels, template_labels, without], "diffdef",
                             log=logged.append)
    lv_map = fused[CLASSES.index("lateral_ventricles")]
    assert lv_map.max() == pytest.approx(2 / 3) and lv_map[lv].mean() > 0.6
    np.testing.assert_array_equal(lv_map > 0.5, lv)  # the majority keeps the template's ventricles
    assert fused[CLASSES.index("wm")][lv].max() <= 1 / 3 + 1e-6
    assert np.all((fused >= 0) & (fused <= 1))
    assert logged == ["template labels fused from 3/3 training subjects"]


def test_nothing_to_fuse_is_an_error(template_labels):
    with pytest.raises(ValueError, match="at least one training subject"):
        fused_class_maps(template_labels, [], "diffdef")


def test_a_shifted_subject_is_registered_back_onto_the_template(template_labels):
    # A subject whose anatomy sits 2 voxels (8 mm) off the template: fused without registration (or through the
    # inverse transform) its white matter would sit 2 (or 4) voxels off; registered onto the template it overlaps.
    shifted = np.roll(template_labels, 2, axis=0)
    wm = tissue_masks(template_labels, "diffdef")["wm"]
    fused_wm = fused_class_maps(template_labels, [shifted], "diffdef")[CLASSES.index("wm")] > 0.5

    def overlap(a, b):
        return float(dice(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None])[0])

    unregistered = overlap(tissue_masks(shifted, "diffdef")["wm"], wm)
    assert overlap(fused_wm, wm) > 0.95 and unregistered < 0.6  # measured: 1.0 and 0.55
