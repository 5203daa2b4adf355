"""The synthetic ageing cohort (4 mm grid)."""

import math

import numpy as np
import pytest
import torch

from diffdef.synth.cohort import SyntheticCohort, SyntheticCohortDataset, sex_log_offset


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cohort():
    return SyntheticCohort(grid="4mm", seed=0)


def test_subject_fields(cohort):
    s = cohort.subject(0)
    assert s.image.shape == (1, 1, 40, 56, 40) and s.image.dtype == torch.float32
    assert s.labels.shape == (1, 1, 40, 56, 40) and s.labels.dtype == torch.uint8
    assert s.dvf.shape == (1, 3, 40, 56, 40)
    assert float(s.image.min()) >= 0.0 and 0.5 < float(s.image.max()) < 1.5
    assert set(torch.unique(s.labels).tolist()) <= {0, 1, 2, 3, 4}
    assert 20 <= s.age <= 90 and s.sex in ("F", "M") and s.ventricle_volume_ml > 0


def test_same_seed_identical_other_seed_different(cohort):
    a = cohort.subject(3)
    b = SyntheticCohort(grid="4mm", seed=0).subject(3)
    assert torch.equal(a.image, b.image) and torch.equal(a.labels, b.labels) and a.age == b.age
    c = SyntheticCohort(grid="4mm", seed=1).subject(3)
    assert c.age != a.age and not torch.equal(a.image, c.image)


def test_access_order_independent(cohort):
    later = [s.image for s in cohort.subjects(3)]  # 0, 1, 2 in order
    fresh = SyntheticCohort(grid="4mm", seed=0)
    assert torch.equal(fresh.subject(2).image, later[2])
    assert torch.equal(fresh.subject(1).image, later[1])


def test_subject_and_its_ageing_field(cohort):
    subject, ageing = cohort.subject_and_ageing_field(4)
    alone = cohort.subject(4)
    assert torch.equal(subject.image, alone.image) and torch.equal(subject.dvf, alone.dvf)
    offset = subject.ventricle_log_offset + sex_log_offset(subject.sex)
    torch.testing.assert_close(ageing, cohort.model.field(subject.age, offset), rtol=0, atol=0)
    assert float((subject.dvf - ageing).abs().max()) > 0.1  # the individual deformation is not in it


def test_parameters_and_ages():
    c = SyntheticCohort(grid="4mm", seed=5, age_range=(40, 60))
    params = [c.parameters(i) for i in range(400)]
    ages = np.array([p["age"] for p in params])
    assert ages.min() >= 40 and ages.max() <= 60
    sexes = [p["sex"] for p in params]
    assert 150 < sexes.count("M") < 250
    z = np.array([p["ventricle_log_offset"] for p in params])
    assert abs(z.mean()) < 0.06 and 0.35 < z.std() < 0.45
    with pytest.raises(ValueError):
        SyntheticCohort(grid="4mm", age_range=(10, 60))


def test_ventricle_spread_at_one_age():
    c = SyntheticCohort(grid="4mm", seed=1, age_range=(60, 64))
    subjects = list(c.subjects(36))
    logv = np.log([s.ventricle_volume_ml for s in subjects])
    assert 0.25 < logv.std(ddof=1) < 0.55
    expected = math.log(c.model.ventricle_volume_ml(62))
    assert abs(np.median(logv) - expected) < 0.25
    # each measured volume follows its drawn target (age, z, sex) closely
    targets = np.log([c.model.ventricle_volume_ml(s.age, s.ventricle_log_offset + sex_log_offset(s.sex))
                      for s in subjects])
    assert np.abs(logv - targets).max() < 0.1


def test_ground_truth_atlas(cohort):
    atlas = cohort.ground_truth_atlas(70)
    assert atlas.ventricle_volume_ml == pytest.approx(cohort.model.ventricle_volume_ml(70), rel=0.05)
    male = cohort.ground_truth_atlas(70, sex="M")
    assert male.ventricle_volume_ml > atlas.ventricle_volume_ml


def test_dataset(cohort):
    ds = SyntheticCohortDataset(cohort, 2)
    assert len(ds) == 2
    item = ds[1]
    assert item["image"].shape == (1, 40, 56, 40) and item["labels"].dtype == torch.uint8
    assert item["sex"].dtype == torch.float32 and float(item["sex"]) in (0.0, 1.0)
    assert torch.equal(item["image"], cohort.subject(1).image[0])
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch["image"].shape == (2, 1, 40, 56, 40) and batch["age"].shape == (2,)
    with pytest.raises(IndexError):
        ds[2]
