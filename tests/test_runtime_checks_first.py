"""``diffdef-run`` refuses bad arguments before any model is opened: exit status 2, the value named.

A spy replaces ``open_model`` and ``generate``: a check that came after them would record a call. The bundle
given is an empty folder: opening it would fail, so getting the expected message shows it was not opened.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import diffdef_runtime.backends as backends
import diffdef_runtime.pipeline as pipeline
from diffdef_runtime.cli import main as cli


@pytest.fixture
def spy(monkeypatch):
    """Record (and refuse) any attempt to open a model or generate."""
    calls = []

    def refuse(name):
        def call(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} was called")
        return call

    monkeypatch.setattr(backends, "open_model", refuse("open_model"))
    monkeypatch.setattr(pipeline, "generate", refuse("generate"))
    return calls


def _invoke(args, bundle):
    tic = time.perf_counter()
    result = CliRunner().invoke(cli, ["--bundle", str(bundle), "--steps", "2", *args])
    return result, time.perf_counter() - tic


def test_out_is_a_file(spy, tmp_path):
    target = tmp_path / "atlases.nii.gz"
    target.write_bytes(b"not a folder")
    result, seconds = _invoke(["--age", "70", "--sex", "F", "--out", str(target)], tmp_path)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for --out: {target} is a file, not a folder" in result.output
    assert "Traceback" not in result.output and spy == [] and seconds < 5
    assert target.read_bytes() == b"not a folder"
    result, _ = _invoke(["--age", "70", "--sex", "F", "--out", str(target / "sub")], tmp_path)
    assert result.exit_code == 2 and f"{target} is a file, not a folder" in result.output and spy == []


def test_out_not_empty_needs_overwrite(spy, tmp_path):
    (tmp_path / "out" / "age-70_sex-F").mkdir(parents=True)
    result, _ = _invoke(["--age", "70", "--sex", "F", "--out", str(tmp_path / "out")], tmp_path)
    assert result.exit_code == 2 and "is not empty (1 entries: age-70_sex-F); pass --overwrite" in result.output
    assert spy == []


@pytest.mark.parametrize("args, message", [
    (["--age", "-5", "--sex", "F"], "Invalid value for --age: age -5 years is impossible: it must be between 0 and "
                                    "125 years"),
    (["--age", "60,130", "--sex", "F"], "age 130 years is impossible"),
    (["--age", "70", "--sex", "X"], "Invalid value for --sex: 'X' is not a sex; use F or M"),
    (["--age", "70", "--ventricles", "-1"], "ventricle_volume_ml -1 mL is impossible"),
    (["--age", "70,70", "--sex", "F"], "condition age-70_sex-F is asked more than once"),
])
def test_impossible_conditions(spy, tmp_path, args, message):
    result, seconds = _invoke([*args, "--out", str(tmp_path / "out")], tmp_path)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert spy == [] and seconds < 5 and not (tmp_path / "out").exists()


def _make_read_only(folder: Path) -> None:
    """0555; for root (who may write there anyway) also the immutable attribute, which binds root too."""
    os.chmod(folder, 0o555)
    if os.geteuid() == 0:
        proc = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"running as root and cannot make a folder immutable: {proc.stderr.strip()}")


def test_out_read_only(spy, tmp_path):
    """A folder the user cannot write into: refused before the bundle is opened, for --out and below it."""
    read_only = tmp_path / "shared"
    read_only.mkdir()
    _make_read_only(read_only)
    try:
        for out in (read_only, read_only / "atlases"):
            result, seconds = _invoke(["--age", "70", "--sex", "F", "--out", str(out)], tmp_path)
            assert result.exit_code == 2, result.output
            assert f"Invalid value for --out: {read_only} is not writable" in result.output
            assert "Traceback" not in result.output and spy == [] and seconds < 5
        assert list(read_only.iterdir()) == []
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(read_only)], check=False)
        os.chmod(read_only, 0o755)


def test_unknown_output_is_refused(spy, tmp_path):
    result, _ = _invoke(["--age", "70", "--outputs", "atlas,mesh", "--out", str(tmp_path / "o")], tmp_path)
    assert result.exit_code == 2 and "Invalid value for --outputs" in result.output and "'mesh'" in result.output
    assert spy == [] and not (tmp_path / "o").exists()
