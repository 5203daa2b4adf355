"""``diffdef_runtime.series``: summary pixels against the atlases, the volume plot's data, the page's links."""

from __future__ import annotations

from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image
from test_runtime_figures import axes_pixels, grey_pixels

from diffdef_runtime.figures import VIEWS, atlas_slice, change_limit, condition_text, intensity_max
from diffdef_runtime.grid import get_grid
from diffdef_runtime.outputs import write_result
from diffdef_runtime.pipeline import AtlasResult
from diffdef_runtime.series import (FOLDER_FILES, series_axis, summary_figure, volumes_figure,
                                    write_series)

GRID = (12, 16, 10)


def _results(ages=(30.0, 50.0, 85.0)) -> list[AtlasResult]:
    rng = np.random.default_rng(1)
    out = []
    for i, age in enumerate(ages):
        atlas = (rng.random(GRID) * (1 + i)).astype(np.float32)  # different brightness per row: a shared scale shows
        jac = np.exp(0.3 * i * rng.standard_normal(GRID)).astype(np.float32)
        out.append(AtlasResult(condition={"age": age, "sex": 1.0}, atlas=atlas, dvf=np.zeros((3, *GRID), np.float32),
                               jacobian=jac, ventricle_volume_ml=20.0 + i * 7.25, seed=0, steps=3, sampler="ddim",
                               samples=1, guidance=1.0, backend="ort"))
    return out


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.steps = [], 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("href", "src"):
            if attrs.get(key):
                self.links.append(attrs[key])
        if tag == "figure" and "step" in (attrs.get("class") or ""):
            self.steps += 1


def _written_series(tmp_path, results):
    affine = get_grid("4mm").affine
    folders = [write_result(r, affine, tmp_path) for r in results]
    files = write_series(results, tmp_path, folders, template_ventricle_ml=17.8, affine=affine)
    return folders, files


def test_summary_slice_equals_the_atlas_slice_it_shows(tmp_path):
    results = _results()
    _, files = _written_series(tmp_path, results)
    labels = [f"{condition_text(r.condition)}\n{r.ventricle_volume_ml:.1f} mL" for r in results]
    # The same call write_series makes: the layout (and so every axes box) is deterministic.
    drawn = summary_figure([r.atlas for r in results], [r.jacobian for r in results], labels,
                           affine=get_grid("4mm").affine)
    drawn.figure.canvas.draw()
    with Image.open(files.summary) as png:
        image = np.asarray(png.convert("RGB"))
    assert image.shape[:2] == (round(drawn.figure.get_figheight() * 100), 1200)
    vmax = intensity_max([r.atlas for r in results])  # one white point for every row
    assert drawn.vmax == vmax and drawn.limit == change_limit([r.jacobian for r in results])
    for row, result in enumerate(results):
        for view in VIEWS:
            expected = grey_pixels(atlas_slice(result.atlas, view, drawn.indices[view], vmax))
            got = axes_pixels(image, drawn.atlas_axes[row][view], *expected.shape)[..., 0].astype(int)
            assert np.abs(got - expected).max() <= 1, (row, view)
    # ... and not the slice of another row (the check can fail).
    other = grey_pixels(atlas_slice(results[0].atlas, "coronal", drawn.indices["coronal"], vmax))
    got = axes_pixels(image, drawn.atlas_axes[2]["coronal"], *other.shape)[..., 0].astype(int)
    assert np.abs(got - other).max() > 10
    norm = drawn.colorbar.mappable.norm
    assert norm.vmin == -norm.vmax == -drawn.limit
    for row in drawn.overlay_axes:  # every overlay row on the one colour scale
        for ax in row.values():
            assert [im.norm.vmax for im in ax.images[1:2]] == [drawn.limit]


def test_page_lists_every_condition_and_every_link_exists(tmp_path):
    results = _results()
    folders, files = _written_series(tmp_path, results)
    assert files.index == tmp_path / "index.html"
    page = files.index.read_text()
    parser = _Links()
    parser.feed(page)
    local = [link for link in parser.links if not link.startswith("#")]
    assert local and all(not link.startswith(("http:", "https:", "//", "/")) for link in local)
    for link in local:
        assert (tmp_path / link).is_file(), link
    assert "summary.png" in local and "volumes.png" in local
    for result, folder in zip(results, folders):
        assert condition_text(result.condition) in page
        assert f"{result.ventricle_volume_ml:.1f}" in page
        for name in FOLDER_FILES:
            assert f"{folder.name}/{name}" in local
    assert parser.steps == len(results)
    assert 'max="2"' in page  # the slider steps through the three conditions


def test_volumes_figure_data_and_template_line(tmp_path):
    results = _results()
    fig = volumes_figure([r.condition for r in results], [r.ventricle_volume_ml for r in results], template_ml=17.8)
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_allclose(lines["atlas"].get_xdata(), [30, 50, 85])
    np.testing.assert_allclose(lines["atlas"].get_ydata(), [20.0, 27.25, 34.5])
    template = lines["template (MNI152): 17.8 mL"]
    assert set(np.asarray(template.get_ydata(), float)) == {17.8}
    assert ax.get_xlabel() == "age (years)" and "mL" in ax.get_ylabel()
    _, files = _written_series(tmp_path, results)
    with Image.open(files.volumes) as png:
        assert png.size == (800, 500)


def test_series_axis():
    ages = [{"age": a, "sex": 0.0} for a in (60.0, 70.0)]
    assert series_axis(ages).name == "age" and series_axis(ages).values == [60.0, 70.0]
    sexes = [{"age": 70.0, "sex": s} for s in (0.0, 1.0)]
    assert series_axis(sexes).ticks == ["age 70 y\nsex F", "age 70 y\nsex M"]
    both = [{"age": 60.0, "sex": 0.0}, {"age": 70.0, "sex": 1.0}]
    assert series_axis(both).name == "condition" and series_axis(both).values == [0.0, 1.0]
    vent = [{"ventricle_volume_ml": v} for v in (20.0, 40.0)]
    fig = volumes_figure(vent, [21.0, 39.0])
    assert "requested volume" in [line.get_label() for line in fig.axes[0].get_lines()]


def test_mismatched_inputs_are_errors(tmp_path):
    results = _results()
    with pytest.raises(ValueError, match="folders"):
        write_series(results, tmp_path, ["a"])
    with pytest.raises(ValueError, match="as many"):
        summary_figure([results[0].atlas], [], ["x"])


NODE_DOM = """
const fs = require("fs");
const page = fs.readFileSync(process.argv[2], "utf8");
const script = page.match(/<script>([\\s\\S]*)<\\/script>/)[1];
function classes() { const s = new Set(); return { toggle(c, on) { on ? s.add(c) : s.delete(c); }, has: c => s.has(c) }; }
const figures = Array.from({length: Number(process.argv[3])}, () => ({ classList: classes() }));
const els = { prev: {}, next: {}, slider: { value: 0 } }, keys = [];
global.document = { documentElement: {}, getElementById: id => els[id], addEventListener: (t, f) => keys.push(f),
                    querySelectorAll: sel => sel === ".step" ? figures : [] };
new Function(script)();
const shown = () => figures.findIndex(f => f.classList.has("current"));
const seen = [shown()];
els.next.onclick(); seen.push(shown());
els.slider.value = String(figures.length - 1); els.slider.oninput(); seen.push(shown());
els.next.onclick(); seen.push(shown());
keys[0]({ key: "ArrowLeft" }); seen.push(shown());
console.log(JSON.stringify(seen));
"""


def test_page_script_steps_through_the_conditions(tmp_path):
    """The page's inline script, run on a stand-in DOM with node: next, slider, the end, the arrow key."""
    import json
    import shutil
    import subprocess

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    _, files = _written_series(tmp_path, _results())
    (tmp_path / "dom.js").write_text(NODE_DOM)
    proc = subprocess.run([node, str(tmp_path / "dom.js"), str(files.index), "3"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [0, 1, 2, 2, 1]
