import pytest

from diffdef.evaluate.atlases import condition_key, curve_conditions
from diffdef.evaluate.cohort import Subject


def _s(i, age, sex):
    return Subject(id=f"s{i}", image_path="", labels_path="", age=age, split="test",
                   conditions={"age": age, "sex": sex})


def test_condition_key_follows_model_order_and_names_missing():
    s = _s(0, 70.0, 1.0)
    assert condition_key(s, ("sex", "age")) == (1.0, 70.0)
    with pytest.raises(KeyError, match="ventricle_volume_ml"):
        condition_key(s, ("age", "ventricle_volume_ml"))


def test_curve_conditions_fix_sex_at_the_common_value():
    subjects = [_s(0, 30, 1.0), _s(1, 40, 1.0), _s(2, 50, 0.0)]
    assert curve_conditions(("age", "sex"), [20, 60], subjects) == [(20.0, 1.0), (60.0, 1.0)]
    assert curve_conditions(("age",), [25], subjects) == [(25.0,)]
