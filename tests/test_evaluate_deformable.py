import time

import numpy as np
import pytest

from diffdef.data.tissues import tissue_masks
from diffdef.evaluate.deformable import REGISTRATION, register, register_labels, warp_image_linear
from diffdef.evaluate.scores import dice_score
from diffdef.template import load_template


def test_shifted_subject_registers_back():
    t = load_template("4mm")
    shift = (2, -1, 1)
    subject = np.roll(t.t1, shift, axis=(0, 1, 2))
    labels = np.roll(t.labels, shift, axis=(0, 1, 2))
    atlas = tissue_masks(t.labels, "diffdef")
    before = tissue_masks(labels, "diffdef")
    tic = time.perf_counter()
    after = tissue_masks(register_labels(t.t1, subject, labels), "diffdef")
    assert time.perf_counter() - tic < 30
    for c in ("lateral_ventricles", "csf", "gm", "wm"):
        d0, d1 = dice_score(atlas[c], before[c]), dice_score(atlas[c], after[c])
        assert d1 > d0 + 0.05, (c, d0, d1)
        assert d1 > 0.85, (c, d1)
    assert np.issubdtype(register_labels(t.t1, subject, labels).dtype, np.integer)


def test_identity_stays_identity_and_describe():
    t = load_template("4mm")
    transform = register(t.t1, t.t1)
    np.testing.assert_allclose(warp_image_linear(t.t1, transform), t.t1, atol=1e-3)
    info = REGISTRATION.describe()
    assert "Demons" in info["method"] and info["smoothing_sigma_voxels"] == 1.5


def test_displacement_voxels_follows_the_warp_convention():
    """A template shifted by 2 voxels along H registers back with u ~ +2 along H: warp_image(moving, u) ~ fixed."""
    import torch

    from diffdef.evaluate.deformable import displacement_voxels, register
    from diffdef.geometry import warp_image
    from diffdef.template import load_template

    t1 = load_template("4mm").t1.astype(np.float32)
    moving = np.roll(t1, 2, axis=1)  # moving(x + 2 e_H) = fixed(x)
    dvf = displacement_voxels(register(t1, moving))
    assert dvf.shape == (3, *t1.shape)
    brain = t1 > 0.3
    assert np.median(dvf[1][brain]) == pytest.approx(2.0, abs=0.5)
    assert abs(np.median(dvf[0][brain])) < 0.3 and abs(np.median(dvf[2][brain])) < 0.3
    back = warp_image(torch.from_numpy(moving)[None, None], torch.from_numpy(dvf)[None])[0, 0].numpy()
    assert np.abs(back - t1)[brain].mean() < 0.5 * np.abs(moving - t1)[brain].mean()
