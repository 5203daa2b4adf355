import warnings

import numpy as np
import pytest

from diffdef.data.manifest import ManifestError, ManifestWarning
from diffdef.evaluate.cohort import decade, read_cohort, split
from evaluate_cohort_helper import COLUMNS, SUBJECTS, write_cohort


def test_reads_subjects_with_conditions_images_and_labels(tmp_path):
    csv_path = write_cohort(tmp_path)
    subjects = read_cohort(csv_path, conditions=("age", "sex"), grid="4mm")
    assert [s.id for s in subjects] == [s[0] for s in SUBJECTS]
    assert [s.conditions["sex"] for s in subjects] == [0.0, 1.0, 0.0, 1.0, 1.0, 0.0]  # 0 = F, 1 = M
    assert len(split(subjects, "test")) == 2 and len(split(subjects, "train")) == 4
    s = subjects[0]
    assert s.image.shape == (40, 56, 40) and s.image.dtype == np.float32
    assert np.issubdtype(s.labels.dtype, np.integer) and set(np.unique(s.labels)) <= {0, 1, 2, 3, 4}
    assert s.masks("diffdef")["lateral_ventricles"].sum() > 0


def test_missing_condition_column_is_named(tmp_path):
    csv_path = write_cohort(tmp_path, columns=tuple(c for c in COLUMNS if c != "sex"))
    with pytest.raises(ManifestError, match="'sex'"):
        read_cohort(csv_path, conditions=("age", "sex"), load=False)


def test_empty_age_row_is_skipped_with_one_warning(tmp_path):
    csv_path = write_cohort(tmp_path)
    text = csv_path.read_text().replace(",30.0,F,", ",,F,")
    csv_path.write_text(text)
    with pytest.warns(ManifestWarning, match="skipped 1"):
        subjects = read_cohort(csv_path, conditions=("age",), load=False)
    assert len(subjects) == 5


def test_bad_sex_and_split_are_errors(tmp_path):
    csv_path = write_cohort(tmp_path)
    csv_path.write_text(csv_path.read_text().replace(",31.0,M,", ",31.0,X,"))
    with pytest.raises(ManifestError, match="sex"):
        read_cohort(csv_path, conditions=("age", "sex"), load=False)
    csv_path = write_cohort(tmp_path / "b")
    csv_path.write_text(csv_path.read_text().replace(",test", ",holdout"))
    with pytest.raises(ManifestError, match="split"):
        read_cohort(csv_path, load=False)


def test_decade():
    assert [decade(a) for a in (20.0, 29.9, 30.0, 65.5)] == [20, 20, 30, 60]
