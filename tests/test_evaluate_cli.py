"""End to end: diffdef-eval on the tiny untrained checkpoint (4mm grid, age + sex) and a hand-made cohort."""

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from diffdef.data.tissues import tissue_masks
from diffdef.evaluate.cli import main
from diffdef.evaluate.scores import atlas_class_masks, dice_per_class, template_class_maps
from diffdef.template import load_template
from evaluate_cohort_helper import COLUMNS, SUBJECTS, write_cohort

FAST = ["--label-scheme", "diffdef", "--samples", "1", "--steps", "3", "--curve-ages", "30:70:20", "--quiet"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return write_cohort(tmp_path_factory.mktemp("cohort"))


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_end_to_end_without_deformable(tiny_checkpoint, cohort, tmp_path, one_torch_thread):
    out = tmp_path / "eval"
    result = CliRunner().invoke(main, ["--manifest", str(cohort), "--checkpoint", str(tiny_checkpoint), "--out",
                                       str(out), "--no-deformable", *FAST])
    assert result.exit_code == 0, result.output + repr(result.exception)
    for name in ("per_subject.csv", "per_bin.csv", "summary.json", "ventricle_volume_vs_age.png", "dice_per_bin.png",
                 "atlases_by_age.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert "model beats the template" in result.output
    rows = _rows(out / "per_subject.csv")
    tests = [s for s in SUBJECTS if s[3] == "test"]
    assert len(rows) == len(tests) * 3  # model, template, linear_average
    assert {r["method"] for r in rows} == {"model", "template", "linear_average"}
    assert "dice_deformable_csf" not in rows[0]

    # the template method's Dice equals the directly computed template Dice
    t = load_template("4mm")
    template_masks = atlas_class_masks(template_class_maps(t.labels), np.zeros((3, 40, 56, 40), np.float32))
    for sid, _age, _sex, _split, shift in tests:
        labels = np.roll(t.labels, shift, axis=(0, 1, 2))
        expected = dice_per_class(template_masks, tissue_masks(labels, "diffdef"))
        row = next(r for r in rows if r["subject"] == sid and r["method"] == "template")
        for c, v in expected.items():
            assert float(row[f"dice_affine_{c}"]) == pytest.approx(v, abs=1e-5)
        assert float(row["folding_pct"]) == 0.0 and float(row["disp_mm"]) == 0.0
    # subject t1 is the unshifted template: the template scores 1 on every class
    assert float(next(r for r in rows if r["subject"] == "t1" and r["method"] == "template")["dice_affine_gm"]) == 1.0
    model_rows = [r for r in rows if r["method"] == "model"]
    assert all(float(r["disp_mm"]) > 0 for r in model_rows)  # the tiny model's DVF is not zero
    lin = [r for r in rows if r["method"] == "linear_average"]
    assert all(int(r["linear_n"]) == 2 + 1 for r in lin) and all(r["linear_widened"] == "True" for r in lin)

    summary = json.loads((out / "summary.json").read_text())
    assert "curve_atlases" not in summary  # arrays for the montage only
    assert summary["counts"] == {"subjects": 6, "test": 2, "train": 4, "deformable_pairs": 0}
    assert summary["registration"] is None and summary["models"]["model"]["conditions"] == ["age", "sex"]
    assert summary["options"]["samples"] == 1 and "model" in summary["method_means"]
    assert {p["baseline"] for p in summary["paired"]} == {"template", "linear_average"}
    bins = _rows(out / "per_bin.csv")
    assert {(b["decade"], b["method"]) for b in bins} == {(d, m) for d in ("30", "60")
                                                         for m in ("model", "template", "linear_average")}

    # a second run refuses the non-empty folder without --overwrite
    again = CliRunner().invoke(main, ["--manifest", str(cohort), "--checkpoint", str(tiny_checkpoint), "--out",
                                      str(out), "--no-deformable", *FAST])
    assert again.exit_code != 0 and "--overwrite" in again.output


def test_missing_condition_column_errors_with_its_name(tiny_checkpoint, tmp_path):
    manifest = write_cohort(tmp_path / "c", columns=tuple(c for c in COLUMNS if c != "sex"))
    result = CliRunner().invoke(main, ["--manifest", str(manifest), "--checkpoint", str(tiny_checkpoint), "--out",
                                       str(tmp_path / "e"), "--no-deformable", *FAST])
    assert result.exit_code != 0 and "'sex'" in result.output
    assert not (tmp_path / "e").exists()


def test_end_to_end_with_deformable_and_compare(tiny_checkpoint, cohort, tmp_path, one_torch_thread):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "stale.txt").write_text("old run")
    result = CliRunner().invoke(main, ["--manifest", str(cohort), "--checkpoint", str(tiny_checkpoint), "--out",
                                       str(out), "--compare", f"again={tiny_checkpoint}", "--overwrite",
                                       "--demons-iterations", "20,10", *FAST])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert not (out / "stale.txt").exists()  # never two runs mixed
    rows = _rows(out / "per_subject.csv")
    assert len(rows) == 2 * 4 and {r["method"] for r in rows} == {"model", "again", "template", "linear_average"}
    for r in rows:
        assert 0.0 <= float(r["dice_deformable_lateral_ventricles"]) <= 1.0
    # a compare model identical to the model scores identically
    for sid in ("t1", "t2"):
        a = next(r for r in rows if r["subject"] == sid and r["method"] == "model")
        b = next(r for r in rows if r["subject"] == sid and r["method"] == "again")
        assert a["dice_affine_csf"] == b["dice_affine_csf"] and a["atlas_vent_ml"] == b["atlas_vent_ml"]
    summary = json.loads((out / "summary.json").read_text())
    assert "Demons" in summary["registration"]["method"] and summary["counts"]["deformable_pairs"] == 8
    assert "deformable" in summary["model_beats_template_lv"]


def test_a_bundle_on_onnx_runtime_scores_like_its_checkpoint(tiny_checkpoint, tiny_bundle, cohort, tmp_path,
                                                            one_torch_thread):
    """--bundle/--backend ort: the exported model gives the checkpoint's Dice (ONNX parity is 1e-4)."""
    dice = {}
    for name, source in (("torch", ["--checkpoint", str(tiny_checkpoint)]),
                         ("ort", ["--bundle", str(tiny_bundle), "--backend", "ort"])):
        out = tmp_path / name
        result = CliRunner().invoke(main, ["--manifest", str(cohort), *source, "--out", str(out), "--no-deformable",
                                           *FAST])
        assert result.exit_code == 0, result.output + repr(result.exception)
        dice[name] = {r["subject"]: float(r["dice_affine_lateral_ventricles"])
                      for r in _rows(out / "per_subject.csv") if r["method"] == "model"}
    assert dice["ort"].keys() == dice["torch"].keys()
    for subject, value in dice["torch"].items():
        assert dice["ort"][subject] == pytest.approx(value, abs=0.02)


def test_fused_template_labels_are_recorded_and_score_the_template(tiny_checkpoint, cohort, tmp_path,
                                                                     one_torch_thread):
    # The training subjects are the template's labels shifted by at most one voxel: registered back onto the
    # template and fused, they give the template's labels at most voxels, so the template still scores 1 on the
    # unshifted held-out subject t1 for the large classes, and the record says which labels were used.
    out = tmp_path / "fused"
    result = CliRunner().invoke(main, ["--manifest", str(cohort), "--checkpoint", str(tiny_checkpoint), "--out",
                                       str(out), "--no-deformable", "--template-labels", "fused", *FAST])
    assert result.exit_code == 0, result.output + repr(result.exception)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["options"]["template_labels"] == "fused"
    assert summary["template_labels"].startswith("the training subjects' labels fused")
    assert summary["timings_s"]["fuse_template_labels"] > 0
    assert summary["template_label_fusion"]["histogram_matching"] is False
    row = next(r for r in _rows(out / "per_subject.csv") if r["subject"] == "t1" and r["method"] == "template")
    assert float(row["dice_affine_wm"]) > 0.95 and float(row["dice_affine_gm"]) > 0.9
