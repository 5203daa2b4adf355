"""diffdef_runtime.conditions: normalisation, named errors, extrapolation warnings, serialisation, age lists."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from diffdef_runtime.conditions import ConditionSpec, ExtrapolationWarning, parse_age_list


@pytest.fixture
def spec() -> ConditionSpec:
    return ConditionSpec(
        names=("age", "sex", "ventricle_volume_ml"),
        ranges={"age": (40.0, 90.0), "sex": (0.0, 1.0), "ventricle_volume_ml": (0.0, 100.0)},
        trained={"age": (50.0, 80.0), "sex": (0.0, 1.0), "ventricle_volume_ml": (10.0, 60.0)},
    )


def _no_warnings(fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args)


def test_normalise_values_and_round_trip(spec):
    out = _no_warnings(spec.normalise, {"age": [50, 65, 80], "sex": "F", "ventricle_volume_ml": 30.0})
    assert out.dtype == np.float32 and out.shape == (3, 3)
    np.testing.assert_allclose(out[:, 0], [0.2, 0.5, 0.8], atol=1e-7)
    np.testing.assert_allclose(out[:, 1], 0.0)
    np.testing.assert_allclose(out[:, 2], 0.3, atol=1e-7)
    back = spec.denormalise(out)
    np.testing.assert_allclose(back["age"], [50, 65, 80], atol=1e-5)
    np.testing.assert_allclose(back["sex"], 0.0)
    np.testing.assert_allclose(back["ventricle_volume_ml"], 30.0, atol=1e-5)
    again = _no_warnings(spec.normalise, {k: v for k, v in back.items()})
    np.testing.assert_allclose(again, out, atol=1e-6)
    np.testing.assert_allclose(spec.denormalise(out[0])["age"], [50.0], atol=1e-5)  # (K,) accepted
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        spec.denormalise(np.zeros((2, 2)))


def test_list_of_dicts_equals_dict_of_lists(spec):
    rows = [
        {"age": 55, "sex": "male", "ventricle_volume_ml": 20},
        {"age": 70.5, "sex": "Female", "ventricle_volume_ml": np.float32(40)},
    ]
    columns = {"age": np.array([55, 70.5]), "sex": ["M", "f"], "ventricle_volume_ml": (20, 40)}
    np.testing.assert_array_equal(_no_warnings(spec.normalise, rows), _no_warnings(spec.normalise, columns))
    np.testing.assert_array_equal(spec.normalise(rows)[:, 1], [1.0, 0.0])


@pytest.mark.parametrize("sex, code", [("F", 0), ("m", 1), (" FEMALE ", 0), ("Male", 1), (0, 0), (1, 1), (1.0, 1)])
def test_sex_encodings(spec, sex, code):
    out = spec.normalise({"age": 60, "sex": sex, "ventricle_volume_ml": 30})
    assert out[0, 1] == code


def test_scalars_broadcast_and_lengths_must_agree(spec):
    assert spec.normalise({"age": 60, "sex": "M", "ventricle_volume_ml": 30}).shape == (1, 3)
    assert spec.normalise({"age": [60, 61], "sex": ["M", "F"], "ventricle_volume_ml": 30}).shape == (2, 3)
    with pytest.raises(ValueError, match="equal lengths"):
        spec.normalise({"age": [60, 61], "sex": ["M", "F", "M"], "ventricle_volume_ml": 30})
    with pytest.raises(ValueError, match="empty"):
        spec.normalise({"age": [], "sex": "M", "ventricle_volume_ml": 30})
    with pytest.raises(ValueError, match="empty"):
        spec.normalise([])


@pytest.mark.parametrize(
    "values, pattern",
    [
        ({"sex": "M", "ventricle_volume_ml": 30}, r"missing condition.*'age'"),
        ({"age": 60, "sex": "M", "ventricle_volume_ml": 30, "height": 180}, r"unknown condition 'height'"),
        ({"age": "seventy", "sex": "M", "ventricle_volume_ml": 30}, r"'age'.*'seventy'.*not a number"),
        ({"age": float("nan"), "sex": "M", "ventricle_volume_ml": 30}, r"'age'.*nan.*not a finite"),
        ({"age": 60, "sex": "M", "ventricle_volume_ml": float("inf")}, r"'ventricle_volume_ml'.*inf"),
        ({"age": [60, "abc"], "sex": "M", "ventricle_volume_ml": 30}, r"'age'.*'abc'"),
        ({"age": 60, "sex": "X", "ventricle_volume_ml": 30}, r"'sex'.*'X'"),
        ({"age": 60, "sex": 2, "ventricle_volume_ml": 30}, r"'sex'.*2"),
        ({"age": True, "sex": "M", "ventricle_volume_ml": 30}, r"'age'.*True"),
        ({"age": None, "sex": "M", "ventricle_volume_ml": 30}, r"'age'.*None"),
        ([{"age": 60, "sex": "M"}], r"missing condition.*ventricle_volume_ml"),
        ([{"age": [60], "sex": "M", "ventricle_volume_ml": 30}], r"'age'.*single value"),
        (np.zeros((2, 3)), r"dict"),
    ],
)
def test_errors_name_the_condition_and_value(spec, values, pattern):
    with pytest.raises(ValueError, match=pattern):
        spec.normalise(values)


def test_condition_not_used_by_model():
    age_only = ConditionSpec(names=("age",), ranges={"age": (40, 90)})
    with pytest.raises(ValueError, match=r"'sex' is not used by this model"):
        age_only.normalise({"age": 60, "sex": "F"})
    assert age_only.trained == {"age": (40.0, 90.0)}  # defaults to the ranges
    np.testing.assert_allclose(age_only.normalise({"age": "65"}), [[0.5]])  # numeric strings are numbers


def test_numeric_strings_accepted_but_not_words(spec):
    out = spec.normalise({"age": " 65 ", "sex": "0", "ventricle_volume_ml": "30"})
    np.testing.assert_allclose(out[0], [0.5, 0, 0.3], atol=1e-7)


def test_extrapolation_warns_once_naming_value_and_range(spec):
    with pytest.warns(ExtrapolationWarning) as record:
        out = spec.normalise({"age": [45, 60, 85, 95], "sex": "M", "ventricle_volume_ml": 30})
    assert len(record) == 1
    message = str(record[0].message)
    assert "age" in message and "45" in message and "85" in message and "95" in message
    assert "[50, 80]" in message
    assert record[0].filename == __file__  # points at the caller
    np.testing.assert_allclose(out[:, 0], [0.1, 0.4, 0.9, 1.1], atol=1e-6)  # still works, even outside [0, 1]
    with pytest.warns(ExtrapolationWarning, match=r"ventricle_volume_ml=70 outside the trained range \[10, 60\]"):
        spec.normalise({"age": 60, "sex": "M", "ventricle_volume_ml": 70})
    assert issubclass(ExtrapolationWarning, UserWarning)
    _no_warnings(spec.normalise, {"age": [50, 80], "sex": "M", "ventricle_volume_ml": [10, 60]})  # edges are in


def test_sex_extrapolation():
    women_only = ConditionSpec(names=("sex",), ranges={"sex": (0, 1)}, trained={"sex": (0, 0)})
    with pytest.warns(ExtrapolationWarning, match="sex=1"):
        women_only.normalise({"sex": "M"})


def test_spec_round_trip_json(spec):
    data = json.loads(json.dumps(spec.to_dict()))
    assert data["names"] == ["age", "sex", "ventricle_volume_ml"]
    assert data["ranges"]["age"] == [40.0, 90.0]
    assert ConditionSpec.from_dict(data) == spec


@pytest.mark.parametrize(
    "data, pattern",
    [
        ({"names": ["age"], "ranges": {"age": [40, 90]}, "extra": 1}, r"unknown field.*'extra'"),
        ({"names": ["age"]}, r"missing field.*ranges"),
        ({"names": ["height"], "ranges": {"height": [0, 1]}}, r"unknown condition 'height'"),
        ({"names": [], "ranges": {}}, r"names"),
        ({"names": "age", "ranges": {"age": [40, 90]}}, r"names"),
        ({"names": ["age", "age"], "ranges": {"age": [40, 90]}}, r"duplicates"),
        ({"names": ["age"], "ranges": {"age": [90, 40]}}, r"ranges\['age'\].*lo < hi"),
        ({"names": ["age"], "ranges": {"age": [40, 40]}}, r"ranges\['age'\]"),
        ({"names": ["age"], "ranges": {"age": [40]}}, r"ranges\['age'\].*pair"),
        ({"names": ["age"], "ranges": {"age": [40, float("nan")]}}, r"ranges\['age'\].*finite"),
        ({"names": ["age"], "ranges": {"age": ["40", 90]}}, r"ranges\['age'\]"),
        ({"names": ["age"], "ranges": {}}, r"ranges.*missing.*'age'"),
        ({"names": ["age"], "ranges": {"age": [40, 90], "sex": [0, 1]}}, r"ranges.*unknown.*'sex'"),
        ({"names": ["age"], "ranges": {"age": [40, 90]}, "trained": {"age": [80, 50]}}, r"trained\['age'\]"),
        ({"names": ["age"], "ranges": {"age": [40, 90]}, "trained": {}}, r"trained.*missing"),
        ("not a dict", r"dict"),
    ],
)
def test_spec_validation(data, pattern):
    with pytest.raises(ValueError, match=pattern):
        ConditionSpec.from_dict(data)


# ----------------------------------------------------------------------------------------------- age lists
@pytest.mark.parametrize(
    "text, expected",
    [
        ("70", [70.0]),
        (" 72.5 ", [72.5]),
        ("50,60,70", [50.0, 60.0, 70.0]),
        ("50, 60 ,70", [50.0, 60.0, 70.0]),
        ("50:80:5", [50.0, 55.0, 60.0, 65.0, 70.0, 75.0, 80.0]),
        ("50:78:5", [50.0, 55.0, 60.0, 65.0, 70.0, 75.0]),  # end off the grid: stop before it
        ("60:62", [60.0, 61.0, 62.0]),  # step defaults to 1
        ("70:70:5", [70.0]),
        ("50:51:0.25", [50.0, 50.25, 50.5, 50.75, 51.0]),
        ("60:61:0.1", [60.0 + i / 10 for i in range(11)]),
        ("50:60:5,75", [50.0, 55.0, 60.0, 75.0]),
    ],
)
def test_parse_age_list(text, expected):
    got = parse_age_list(text)
    assert len(got) == len(expected)
    assert all(math.isclose(a, b, abs_tol=1e-9) for a, b in zip(got, expected))
    assert all(isinstance(a, float) for a in got)


def test_parse_age_list_50_80_5_has_7_values():
    assert len(parse_age_list("50:80:5")) == 7


@pytest.mark.parametrize(
    "text",
    ["", "  ", "seventy", "50:80:0", "50:80:-5", "80:50:5", "50:", "50::5", "50,,60", "50:60:5:1", "nan", "1e999"],
)
def test_parse_age_list_errors_name_the_text(text):
    with pytest.raises(ValueError) as info:
        parse_age_list(text)
    assert repr(text) in str(info.value)


def test_parse_age_list_refuses_huge_lists():
    with pytest.raises(ValueError, match="more than"):
        parse_age_list("0:100000:0.001")
