import json

import numpy as np
import pytest

from diffdef.evaluate.report import (check_output, output_folder, plot_atlases, table, volumes_figure, write_csv,
                                     write_json)


def _result():
    rows = []
    for m in ("model", "template"):
        for sid, d in (("a", 0.8), ("b", 0.6)):
            row = {"subject": sid, "age": 30.0, "decade": 30, "method": m, "atlas_vent_ml": 17.0, "vent_abs_error_ml": 1.0}
            row.update({f"dice_affine_{c}": d + (0.1 if m == "model" else 0.0)
                        for c in ("lateral_ventricles", "ventricles", "csf", "gm", "wm")})
            rows.append(row)
    paired = [{"baseline": "template", "protocol": "affine", "class": "lateral_ventricles", "n": 2, "wins": 2,
               "ties": 0, "losses": 0, "mean_diff": 0.1, "wilcoxon_p": 0.5}]
    return {"rows": rows, "methods": ["model", "template"], "protocols": ["affine"], "spearman": {"model": None},
            "counts": {"test": 2}, "paired": paired, "model_beats_template_lv": {"affine": 1.0}}


def test_table_lines():
    text = table(_result())
    assert "model" in text and "0.800" in text and "0.700" in text  # means 0.9/0.7 -> 0.8; template 0.7
    assert "2/0/0" in text and "p=0.5" in text and "100% of subjects" in text


def test_output_folder_is_atomic_and_refuses_non_empty(tmp_path):
    out = tmp_path / "out"
    with output_folder(out) as folder:
        write_csv(folder / "a.csv", [{"x": 1.5, "y": "s"}, {"x": 2.0, "z": True}])
        assert not out.exists()  # nothing at the target until the run finished
    assert (out / "a.csv").read_text().splitlines() == ["x,y,z", "1.5,s,", "2,,True"]
    with pytest.raises(FileExistsError, match="--overwrite"):
        check_output(out, overwrite=False)
    with pytest.raises(RuntimeError):
        with output_folder(out, overwrite=True) as folder:
            (folder / "b.txt").write_text("half")
            raise RuntimeError("killed")
    assert sorted(p.name for p in out.iterdir()) == ["a.csv"]  # the failed run left nothing behind
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary siblings left
    with output_folder(out, overwrite=True) as folder:
        write_json(folder / "s.json", {"nan": float("nan"), "v": 1})
    assert sorted(p.name for p in out.iterdir()) == ["s.json"]
    assert json.loads((out / "s.json").read_text()) == {"nan": None, "v": 1}


def _curves_result():
    rng = np.random.default_rng(0)
    images = [rng.random((12, 16, 10)).astype(np.float32) for _ in range(2)]
    jacobians = [np.ones((12, 16, 10), np.float32), np.full((12, 16, 10), 0.8, np.float32)]
    return {
        "training_volumes": [{"age": 30.0, "vent_ml": 15.0, "split": "train"},
                             {"age": 70.0, "vent_ml": 40.0, "split": "test"}],
        "curves": {"model": {"ages": [30.0, 70.0], "ventricle_ml": [18.0, 35.0]},
                   "template": {"ages": [30.0, 70.0], "ventricle_ml": [17.8, 17.8]},
                   "linear_average": {"ages": [30.0, 70.0], "ventricle_ml": [16.0, 38.0]}},
        "curve_atlases": {"ages": [30.0, 70.0], "images": images, "jacobians": jacobians,
                          "ventricle_ml": [18.0, 35.0], "affine": np.eye(4)},
    }


def test_volume_plot_uses_the_runtime_curve_and_template_mark():
    fig = volumes_figure(_curves_result())
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    np.testing.assert_allclose(lines["model atlas"].get_ydata(), [18.0, 35.0])
    assert lines["model atlas"].get_marker() == "o"  # series.draw_volume_curve's style
    assert set(np.asarray(lines["template: 17.8 mL"].get_ydata(), float)) == {17.8}  # series.mark_template_volume


def test_atlas_montage_is_the_runtime_summary(tmp_path):
    from PIL import Image

    result = _curves_result()
    assert plot_atlases(tmp_path / "a.png", result)
    with Image.open(tmp_path / "a.png") as png:
        assert png.size[0] == 1200 and png.size[1] > 300  # two rows of the runtime's summary figure
    assert not plot_atlases(tmp_path / "b.png", {**result, "curve_atlases": None})
    assert not (tmp_path / "b.png").exists()
