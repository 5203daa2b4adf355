"""``benchmarks/true_field_targets.py``: the neighbourhood means of the cohort's true fields, checked against
the subjects' own fields on the 4 mm grid (a few subjects, seconds)."""

from __future__ import annotations

import re

import pytest
import torch
from click.testing import CliRunner
from file_helpers import load_benchmark

from diffdef.synth.cohort import VENTRICLE_LOG_SD, SyntheticCohort, sex_log_offset
from diffdef.training.data import SYNTHETIC_RANGES, neighbour_weights

OFFSET_SD = (VENTRICLE_LOG_SD**2 + sex_log_offset("M") ** 2) ** 0.5  # normal offset and the two sexes' offsets


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("true_field_targets")


@pytest.fixture(scope="module")
def cohort():
    return SyntheticCohort("4mm", seed=0)


def test_one_subject_mean_is_that_subjects_fields(bench, cohort):
    means, stats = bench.neighbourhood_targets(cohort, [1], [30.0, 70.0], 0.05)
    subject = cohort.subject(0)
    offset = subject.ventricle_log_offset + sex_log_offset(subject.sex)
    ageing = cohort.model.field(subject.age, offset)
    for k in range(2):  # one subject carries all the weight at every age
        assert torch.allclose(means[("subject", 1)][k], subject.dvf[0], atol=1e-6)
        assert torch.allclose(means[("ageing", 1)][k], ageing[0], atol=1e-6)
    # the two kinds differ by the individual deformation, which is not small
    assert (means[("subject", 1)] - means[("ageing", 1)]).abs().max() > 0.1
    for st in stats[1]:
        assert st["offset"] == pytest.approx(offset, abs=1e-6) and st["age"] == pytest.approx(subject.age)
        assert st["n_eff"] == pytest.approx(1.0) and st["se"] == pytest.approx(OFFSET_SD)
        assert st["volume_ml"] == pytest.approx(subject.ventricle_volume_ml, rel=1e-5)


def test_means_are_the_gaussian_weighted_sums(bench, cohort):
    ages, sigma = [30.0, 70.0], 0.2
    means, stats = bench.neighbourhood_targets(cohort, [2, 4], ages, sigma)
    lo, hi = SYNTHETIC_RANGES["age"]
    subjects = [cohort.subject(i) for i in range(4)]
    ageing = [cohort.model.field(s.age, s.ventricle_log_offset + sex_log_offset(s.sex))[0] for s in subjects]
    norm = torch.tensor([[(s.age - lo) / (hi - lo)] for s in subjects])
    for n in (2, 4):
        for k, age in enumerate(ages):
            w = neighbour_weights(norm[:n], torch.tensor([(age - lo) / (hi - lo)]), sigma)
            expected = sum(w[i] * subjects[i].dvf[0] for i in range(n))
            assert torch.allclose(means[("subject", n)][k], expected, atol=1e-5)
            expected = sum(w[i] * ageing[i] for i in range(n))
            assert torch.allclose(means[("ageing", n)][k], expected, atol=1e-5)
            offsets = torch.tensor([s.ventricle_log_offset + sex_log_offset(s.sex) for s in subjects[:n]])
            st = stats[n][k]
            assert st["offset"] == pytest.approx(float(w @ offsets), abs=1e-6)
            assert st["n_eff"] == pytest.approx(float(1 / (w**2).sum()), rel=1e-5)
            assert 1.0 <= st["n_eff"] <= n
            assert st["se"] == pytest.approx(OFFSET_SD / float(1 / (w**2).sum()) ** 0.5, rel=1e-5)
            assert st["age"] == pytest.approx(sum(float(w[i]) * subjects[i].age for i in range(n)), rel=1e-5)
            volume = sum(float(w[i]) * subjects[i].ventricle_volume_ml for i in range(n))
            assert st["volume_ml"] == pytest.approx(volume, rel=1e-5)
    # the prefix of 2 is not the prefix of 4
    assert not torch.allclose(means[("subject", 2)], means[("subject", 4)])


def test_bad_sizes_are_refused(bench, cohort):
    with pytest.raises(ValueError, match="sizes"):
        bench.neighbourhood_targets(cohort, [0, 3], [30.0], 0.05)
    with pytest.raises(ValueError, match="nodes"):
        bench.population_limit_targets(cohort.model, [30.0], 0)


def test_population_limit_is_the_mean_over_offsets_and_sexes(bench, cohort):
    model = cohort.model
    half_sex = sex_log_offset("M")
    # one node: the median offset, both sexes
    one = bench.population_limit_targets(model, [30.0, 80.0], nodes=1)
    for k, age in enumerate((30.0, 80.0)):
        expected = (model.field(age, half_sex)[0] + model.field(age, -half_sex)[0]) / 2
        assert torch.allclose(one[k], expected, atol=1e-6)
    # two Gauss-Hermite nodes sit at +- one standard deviation with equal weights
    two = bench.population_limit_targets(model, [30.0], nodes=2)
    expected = sum(model.field(30.0, z + s)[0] for z in (VENTRICLE_LOG_SD, -VENTRICLE_LOG_SD)
                   for s in (half_sex, -half_sex)) / 4
    assert torch.allclose(two[0], expected, atol=1e-5)
    assert not torch.allclose(two[0], one[0], atol=1e-3)  # the offsets' spread changes the mean field


def test_table(bench, cohort):
    result = CliRunner().invoke(bench.main, ["--grid", "4mm", "--sizes", "3,2", "--ages", "30,80",
                                             "--limit-nodes", "2"])
    assert result.exit_code == 0, result.output
    blocks = result.output.split("population limit (")[0].split("neighbourhood means over the first ")[1:]
    assert [b.split()[0] for b in blocks] == ["2", "3"]  # sizes sorted
    _, stats = bench.neighbourhood_targets(cohort, [2, 3], [30.0, 80.0], 0.05)
    for block, n in zip(blocks, (2, 3)):
        rows = re.findall(r"^\s+(30|80) \| ([+-][\d.]+) \(([\d.]+), +([\d.]+)\) +\| +([\d.]+) \| +([\d.]+) \| "
                          r"+([\d.]+) \|", block, flags=re.M)
        assert [r[0] for r in rows] == ["30", "80"]
        for (_, _, se, n_eff, subjects_ml, model_ml, true_ml), st in zip(rows, stats[n]):
            assert float(se) == pytest.approx(OFFSET_SD / float(n_eff) ** 0.5, abs=2e-3)
            assert float(subjects_ml) == pytest.approx(st["volume_ml"], abs=0.06)
            at_mean = cohort.model.ground_truth_atlas(st["age"], st["offset"]).ventricle_volume_ml
            assert float(model_ml) == pytest.approx(at_mean, abs=0.06)
        assert float(rows[1][6]) > float(rows[0][6])  # true ventricles grow from 30 to 80
        assert len(re.findall(r"beat the template on ventricle Dice at \d/2 ages, on CSF Dice at \d/2", block)) == 2
    limit = result.output.split("population limit (")[1]
    rows = re.findall(r"^\s+(30|80) \| +([\d.]+) \| +([\d.]+) \|", limit, flags=re.M)
    assert [r[0] for r in rows] == ["30", "80"] and float(rows[1][2]) > float(rows[0][2])
    assert re.search(r"population limit: beats the template on ventricle Dice at \d/2 ages, on CSF Dice at \d/2",
                     limit)
