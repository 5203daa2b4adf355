import numpy as np

from diffdef.prepare import qc

GOOD = {"qc_brain_dice": 0.94, "qc_ncc": 0.68, "qc_scale_min": 1.0, "qc_scale_max": 1.2, "qc_det": 1.3}


def test_good_figures_pass():
    assert qc.check_bounds(GOOD) == ""


def test_just_outside_each_bound_fails_with_that_reason():
    cases = {
        "qc_brain_dice": qc.MIN_BRAIN_DICE - 0.001,
        "qc_ncc": qc.MIN_NCC - 0.001,
        "qc_scale_min": qc.SCALE_RANGE[0] - 0.001,
        "qc_scale_max": qc.SCALE_RANGE[1] + 0.001,
        "qc_det": qc.DET_RANGE[1] + 0.001,
    }
    for name, value in cases.items():
        reason = qc.check_bounds({**GOOD, name: value})
        assert reason.startswith(name), reason
        assert ";" not in reason
    assert "qc_det" in qc.check_bounds({**GOOD, "qc_det": -1.3})


def test_dice_and_ncc():
    a = np.zeros((4, 4, 4), bool)
    a[:2] = True
    assert qc.dice(a, a) == 1.0 and qc.dice(a, ~a) == 0.0
    x = np.random.default_rng(0).random((4, 4, 4))
    assert abs(qc.ncc(x, 2 * x + 1, np.ones_like(a)) - 1.0) < 1e-9


def test_qc_html_lists_failures(tmp_path):
    records = [{"id": "a", "status": "ok", "age": 30.0, "qc": GOOD, "reason": ""},
               {"id": "b<", "status": "failed", "age": None, "qc": {}, "reason": "age '' is empty"}]
    qc.write_qc_html(tmp_path / "qc.html", records)
    text = (tmp_path / "qc.html").read_text()
    assert "1 of 2 subjects passed" in text and "b&lt;" in text and "FAIL" in text
