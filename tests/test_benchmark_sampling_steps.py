"""``benchmarks/sampling_steps.py`` on the tiny checkpoint: one row per (steps, age), scored like
``evaluate_atlases.py`` (``diffdef.synth.scoring.score_atlas``), and the per-step-count summary."""

from __future__ import annotations

import json

from click.testing import CliRunner
from file_helpers import load_benchmark


def test_steps_table(tiny_checkpoint, tmp_path):
    steps = load_benchmark("sampling_steps")
    out = tmp_path / "steps.json"
    result = CliRunner().invoke(steps.main, ["--checkpoint", str(tiny_checkpoint), "--ages", "50,70",
                                             "--steps", "1,3", "--json-out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert [(r["steps"], r["age"]) for r in data["rows"]] == [(1, 50.0), (1, 70.0), (3, 50.0), (3, 70.0)]
    for row in data["rows"]:
        assert 0.0 <= row["dice_vent"] <= 1.0 and 0.0 <= row["dice_csf"] <= 1.0 and row["true_volume_ml"] > 0
    summary = {s["steps"]: s for s in data["summary"]}
    rows3 = [r for r in data["rows"] if r["steps"] == 3]
    assert summary[3]["dice_vent"] == sum(r["dice_vent"] for r in rows3) / 2
    assert summary[3]["abs_volume_error_ml"] == sum(abs(r["volume_ml"] - r["true_volume_ml"]) for r in rows3) / 2
    assert "Dice vent" in result.output and "1 steps:" in result.output and "3 steps:" in result.output
