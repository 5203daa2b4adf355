"""The default sampler step count comes from the model (model.json / bundle manifest ``default_steps``), falling
back to 20 for models that record none."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from diffdef_runtime.bundle import CHECKSUMS, Bundle, format_checksums, parse_checksums, sha256_file
from diffdef_runtime.pipeline import DEFAULT_STEPS, recorded_default_steps


def test_recorded_default_steps():
    assert recorded_default_steps({"default_steps": 7}) == 7
    assert recorded_default_steps({}) == DEFAULT_STEPS == 20
    with pytest.raises(ValueError):
        recorded_default_steps({"default_steps": -1})


def _bundle_with(tiny_bundle, tmp_path, steps) -> Path:
    root = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    manifest = json.loads((root / "manifest.json").read_text())
    if steps is None:
        manifest.pop("default_steps", None)
    else:
        manifest["default_steps"] = steps
    (root / "manifest.json").write_text(json.dumps(manifest))
    table = parse_checksums(root / CHECKSUMS)  # re-sign the edited manifest, as an export would have
    table["manifest.json"] = sha256_file(root / "manifest.json")
    (root / CHECKSUMS).write_text(format_checksums(table))
    return root


def test_bundle_records_the_checkpoints_default_steps(tiny_bundle, tiny_checkpoint):
    from diffdef.generate import model_info

    manifest = Bundle.open(tiny_bundle).manifest
    assert manifest["default_steps"] == recorded_default_steps(json.loads((tiny_checkpoint / "model.json").read_text()))
    assert Bundle.open(tiny_bundle).model_info().default_steps == model_info(tiny_checkpoint).default_steps


@pytest.mark.parametrize("recorded,asked,used", [(2, None, 2), (None, None, 20), (2, 3, 3)])
def test_cli_steps_default_from_the_model(tiny_bundle, tmp_path, recorded, asked, used):
    from diffdef_runtime.cli import main

    root = _bundle_with(tiny_bundle, tmp_path, recorded)
    assert Bundle.open(root).model_info().default_steps == (recorded or 20)
    if used == 20:  # 20 steps of the tiny model are quick, but the point is only the number: stop at generate
        import diffdef_runtime.pipeline as pipeline

        seen = {}

        def fake_generate(*args, steps, **kwargs):
            seen["steps"] = steps
            raise RuntimeError("stop here")

        mp = pytest.MonkeyPatch()
        mp.setattr(pipeline, "generate", fake_generate)
        try:
            result = CliRunner().invoke(main, ["--bundle", str(root), "--age", "70", "--sex", "F",
                                               "--out", str(tmp_path / "out")])
        finally:
            mp.undo()
        assert "stop here" in result.output and seen["steps"] == 20
        return
    args = ["--bundle", str(root), "--age", "70", "--sex", "F", "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(main, args + (["--steps", str(asked)] if asked else []))
    assert result.exit_code == 0, result.output
    record = json.loads(next((tmp_path / "out").rglob("record.json")).read_text())
    assert record["steps"] == used


def test_api_steps_default_from_the_model(tiny_bundle, tmp_path):
    from diffdef_runtime.api import AtlasGenerator

    generator = AtlasGenerator(bundle=_bundle_with(tiny_bundle, tmp_path, 2))
    assert generator.generate(age=70, sex="F")[0].steps == 2
    assert generator.generate(age=70, sex="F", steps=1)[0].steps == 1
