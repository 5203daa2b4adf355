"""The template's class maps fused from training subjects' label maps (diffdef.evaluate.fused_labels)."""

import numpy as np
import pytest

from diffdef.data.tissues import tissue_masks
from diffdef.evaluate.fused_labels import fused_class_maps
from diffdef.evaluate.scores import CLASSES, template_class_maps
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
