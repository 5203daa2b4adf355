"""The ground-truth ageing model (4 mm grid)."""

import math

import pytest
import torch
from scipy.integrate import quad

from diffdef.geometry import compose, jacobian_determinant
from diffdef.synth import ageing
from diffdef.synth.ageing import AgeingModel, ventricle_growth_rate, ventricle_log_ratio

AGES = (20, 30, 50, 70, 85, 90)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    return AgeingModel("4mm")


@pytest.fixture(scope="module")
def measured(model):
    out = {}
    for age in AGES:
        dvf = model.field(age)
        out[age] = (dvf, model.volumes(dvf))
    return out


def test_rates_analytic():
    assert ventricle_growth_rate(20) == pytest.approx(0.01)
    assert ventricle_growth_rate(50) == pytest.approx(0.02)
    assert ventricle_growth_rate(80) == pytest.approx(0.045)
    assert ventricle_growth_rate(90) == pytest.approx(0.045 + 0.025 / 3)
    assert ventricle_log_ratio(25) == 0.0
    for age in (20, 37.5, 50, 64, 80, 90):
        expected = quad(ventricle_growth_rate, 25, age, points=[50, 80])[0]
        assert ventricle_log_ratio(age) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("age", [19.9, 90.5, float("nan")])
def test_age_out_of_range(model, age):
    with pytest.raises(ValueError, match=str(age)):
        model.field(age)
    with pytest.raises(ValueError, match=str(age)):
        model.ventricle_volume_ml(age)


def test_ventricle_growth_matches_rates(model, measured):
    vol = {a: measured[a][1]["ventricles"] for a in AGES}
    assert all(vol[a] < vol[b] for a, b in zip(AGES, AGES[1:]))
    for a1, a2 in [(20, 30), (30, 50), (50, 70), (70, 85), (85, 90), (30, 85)]:
        analytic = math.exp(ventricle_log_ratio(a2) - ventricle_log_ratio(a1))
        assert vol[a2] / vol[a1] == pytest.approx(analytic, rel=0.10), (a1, a2)
    for a in AGES:
        assert vol[a] == pytest.approx(model.ventricle_volume_ml(a), rel=0.05)


def test_offset_scales_ventricles(model):
    vol = model.volumes(model.field(60, ventricle_log_offset=0.4))["ventricles"]
    assert vol == pytest.approx(model.ventricle_volume_ml(60) * math.exp(0.4), rel=0.05)


def test_sulcal_rises_gm_falls(model, measured):
    sulcal = [measured[a][1]["sulcal_csf"] for a in (20, 30, 50, 70)]
    gm = [measured[a][1]["gm"] for a in (20, 30, 50, 70)]
    assert sulcal[0] < sulcal[1] < sulcal[2] <= sulcal[3] + 1e-6
    assert sulcal[1] / sulcal[0] == pytest.approx(math.exp(0.02 * 10), rel=0.05)
    assert gm[3] < gm[2] < gm[1]
    # not calibrated, but should be a plausible atrophy (a few % to a few tens of % over 40 years)
    assert 0.6 < gm[3] / gm[1] < 0.99


def test_fold_free(measured):
    for age, (dvf, _) in measured.items():
        assert dvf.shape == (1, 3, 40, 56, 40) and dvf.dtype == torch.float32
        assert float(jacobian_determinant(dvf).min()) > 0.0, age


def test_reference_age_is_identity(model):
    dvf = model.field(ageing.REFERENCE_AGE)
    assert float(dvf.abs().max()) < 1e-3


@pytest.mark.parametrize("age", [20.0, 70.0])
def test_inverse_field_undoes_the_ageing_field(model, age):
    field, _ = model.coarse_field(age, 0.2)
    inverse, _ = model.coarse_field(age, 0.2, inverse=True)
    size = float(field.norm(dim=1).mean())
    naive = float(compose(field, -field).norm(dim=1).mean())  # -u: the inverse only to first order
    for round_trip in (compose(field, inverse), compose(inverse, field)):  # exact up to trilinear resampling
        residual = float(round_trip.norm(dim=1).mean())
        assert residual < 0.4 * size and residual < 0.75 * naive


def test_ground_truth_atlas(model, measured):
    atlas = model.ground_truth_atlas(70)
    assert atlas.t1.shape == (1, 1, 40, 56, 40) and atlas.labels.dtype == torch.uint8
    assert atlas.ventricle_volume_ml == pytest.approx(measured[70][1]["ventricles"], rel=1e-4)
    assert torch.equal(atlas.dvf, measured[70][0])
    lab_ml = float((atlas.labels == 4).sum()) * model.grid.voxel_volume_ml
    assert lab_ml == pytest.approx(atlas.ventricle_volume_ml, rel=0.3)


def test_tissue_report_logs(model, caplog):
    with caplog.at_level("INFO", logger="diffdef.synth.ageing"):
        rows = model.tissue_report(ages=(30, 50))
    assert len(rows) == 2 and rows[1]["gm_pct_per_year"] < 0
    assert any("ageing 4mm" in r.getMessage() for r in caplog.records)
