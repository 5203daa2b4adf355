"""``benchmarks/latency.py``: the per-stage table on the tiny bundle (numbers are machine-dependent; the test
checks the stages, their consistency and the comparison with the paper)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from file_helpers import load_benchmark


@pytest.fixture(scope="module")
def latency():
    return load_benchmark("latency")


def test_latency_table(latency, tiny_bundle, tmp_path):
    out = tmp_path / "latency.json"
    result = CliRunner().invoke(latency.main, ["--bundle", str(tiny_bundle), "--steps", "3", "--repeats", "2",
                                               "--ages", "60,70", "--json-out", str(out)])
    assert result.exit_code == 0, result.output
    for label in ("denoise, per step", "denoise, 3 steps", "decode", "warp", "jacobian", "write files",
                  "total (2 atlases)", "per atlas", "paper, per atlas", "speed-up per atlas"):
        assert label in result.output
    assert "warm-up" in result.output and "run 2" in result.output
    seconds = json.loads(out.read_text())["seconds"]["ort"]
    parts = sum(seconds[k] for k in ("denoise_total", "decode", "warp", "jacobian", "write"))
    assert 0 < parts <= seconds["total"] * 1.01
    assert seconds["denoise_step"] * 3 <= seconds["denoise_total"] * 1.01
    assert seconds["per_atlas"] == pytest.approx(seconds["total"] / 2)
    assert seconds["per_atlas_no_write"] == pytest.approx((seconds["total"] - seconds["write"]) / 2, rel=0.05)
    result = CliRunner().invoke(latency.main, ["--bundle", str(tiny_bundle), "--steps", "2", "--repeats", "1",
                                               "--outputs", "atlas", "--no-compress"])
    assert result.exit_code == 0 and "per atlas, without writing" in result.output


def test_format_table_speed_up(latency):
    row = {"denoise_step": 0.01, "denoise_total": 0.2, "decode": 0.3, "warp": 0.1, "jacobian": 0.05,
           "write": 0.1, "total": 0.8, "per_atlas": 0.4, "per_atlas_no_write": 0.35}
    text = latency.format_table({"ort": row}, steps=20, n_atlases=2)
    assert "61.5x" in text  # 24.6 s / 0.4 s
    assert "(20 vs 500 steps" in text


def test_default_conditions_fill_the_other_conditions(latency):
    from diffdef_runtime.conditions import ConditionSpec

    spec = ConditionSpec(names=("age", "sex", "ventricle_volume_ml"),
                         ranges={"age": (20, 90), "sex": (0, 1), "ventricle_volume_ml": (5, 80)},
                         trained={"age": (45, 85), "sex": (0, 1), "ventricle_volume_ml": (10, 50)})
    assert latency.default_conditions(spec, [60.0]) == {"age": [60.0], "sex": 0.0, "ventricle_volume_ml": 30.0}
