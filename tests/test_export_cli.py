"""``diffdef-export``: clear errors (non-zero exit, message naming the problem) and the printed report."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from diffdef_export.cli import main
from diffdef_runtime.bundle import Bundle


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_missing_checkpoint_folder(tmp_path):
    result = _run(tmp_path / "nope", "-o", tmp_path / "out")
    assert result.exit_code != 0 and "checkpoint folder not found" in result.output
    assert not (tmp_path / "out").exists()


def test_folder_without_model_json_is_not_a_checkpoint(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "denoiser.json").write_text("{}")
    result = _run(tmp_path / "ckpt", "-o", tmp_path / "out")
    assert result.exit_code != 0 and "not a DiffDef checkpoint: no model.json" in result.output


def test_corrupt_weights_file_is_named(tiny_checkpoint, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    path = ckpt / "dvf_decoder.safetensors"
    path.write_bytes(path.read_bytes()[:-100])  # truncated
    result = _run(ckpt, "-o", tmp_path / "out")
    assert result.exit_code != 0
    assert "dvf_decoder.safetensors" in result.output and "checksum mismatch" in result.output
    assert not (tmp_path / "out").exists()


def test_coarser_grid_than_training_is_refused(tmp_path):
    from diffdef_export.testing import make_untrained_checkpoint

    ckpt = make_untrained_checkpoint(tmp_path / "ckpt2mm", grid="2mm")
    result = _run(ckpt, "-o", tmp_path / "out", "--grid", "4mm")
    assert result.exit_code != 0
    assert "--grid 4mm" in result.output and "training grid 2mm" in result.output
    assert not (tmp_path / "out").exists()


def test_unknown_grid_name_is_refused(tiny_checkpoint, tmp_path):
    result = _run(tiny_checkpoint, "-o", tmp_path / "out", "--grid", "3mm")
    assert result.exit_code != 0 and "3mm" in result.output


def test_tensorrt_without_tensorrt_is_a_clear_error(tiny_checkpoint, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    result = _run(tiny_checkpoint, "-o", tmp_path / "out", "--tensorrt")
    assert result.exit_code != 0
    assert "--tensorrt needs the TensorRT Python package" in result.output and "import tensorrt" in result.output
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_force_and_report_is_printed(tiny_checkpoint, tmp_path):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    result = _run(tiny_checkpoint, "-o", out)
    assert result.exit_code != 0 and "not empty" in result.output and "--force" in result.output
    assert (out / "keep.txt").read_text() == "precious"

    result = _run(tiny_checkpoint, "-o", out, "--force", "--fp16")
    assert result.exit_code == 0, result.output
    for name in ("unet", "dvf_decoder", "warp", "warp_gather"):
        assert any(line.startswith(name + " ") for line in result.output.splitlines()), name
    assert "max rel" in result.output and "GridSample (5-D: TensorRT >= 11.2)" in result.output
    assert not (out / "keep.txt").exists()
    assert Bundle.open(out).precision == "fp16"


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_is_instant_and_lists_options(flag):
    result = _run(flag)
    assert result.exit_code == 0
    for option in ("--fp16", "--tensorrt", "--grid", "--tensorrt-batch", "--force"):
        assert option in result.output
