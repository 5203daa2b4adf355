import random

import numpy as np

from diffdef.prepare.split import assign_split


def _pairs(n=103, seed=1):
    rng = np.random.default_rng(seed)
    return [(f"s{i:03d}", float(rng.uniform(20, 85))) for i in range(n)]


def test_split_is_stable_across_runs_and_row_order():
    pairs = _pairs()
    first = assign_split(pairs, 0.2, seed=0)
    shuffled = list(pairs)
    random.Random(3).shuffle(shuffled)
    assert assign_split(shuffled, 0.2, seed=0) == first
    assert assign_split(pairs, 0.2, seed=0) == first
    assert assign_split(pairs, 0.2, seed=1) != first  # the seed matters


def test_split_fraction_and_stratification():
    pairs = _pairs(100)
    split = assign_split(pairs, 0.2, seed=0)
    assert sum(v == "test" for v in split.values()) == 20
    ordered = [sid for _, sid in sorted((age, sid) for sid, age in pairs)]
    for start in range(0, 100, 5):  # every age block of 5 contributes exactly one test subject
        assert sum(split[s] == "test" for s in ordered[start:start + 5]) == 1
    ages = dict(pairs)
    test_ages = [ages[s] for s, v in split.items() if v == "test"]
    assert min(test_ages) < 30 and max(test_ages) > 75


def test_split_leaves_out_missing_ages_without_moving_others():
    pairs = _pairs(50)
    with_missing = pairs + [("zz-no-age", None)]
    split = assign_split(with_missing, 0.25, seed=5)
    assert "zz-no-age" not in split
    assert split == assign_split(pairs, 0.25, seed=5)
