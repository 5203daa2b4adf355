"""A runtime-only install (``pip install "diffdef[runtime]"``) in a fresh virtual environment: no torch, a working
``diffdef-run``, and training/export commands that name the extra to install instead of a traceback.

This is the only test that downloads (pip, from the configured package index: about a minute). Set
``DIFFDEF_RUNTIME_VENV`` to a virtual environment made this way to reuse it (e.g. built once per CI run).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAINING_COMMANDS = {"diffdef-train": "train", "diffdef-synth": "train", "diffdef-export": "export,runtime",
                     "diffdef-prepare": "prepare", "diffdef-eval": "prepare"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory) -> Path:
    given = os.environ.get("DIFFDEF_RUNTIME_VENV")
    if given:
        return Path(given)
    work = tmp_path_factory.mktemp("runtime_install")
    src = work / "src"  # a copy: building from the checkout would write build/ and *.egg-info into it
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("diffdef", "export", "runtime"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"{src}[runtime]"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return venv


def _run(venv: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(venv / "bin" / args[0]), *args[1:]], capture_output=True, text=True, timeout=300,
                          env=env, **kwargs)


def test_runtime_only_install(runtime_venv, tiny_bundle, tmp_path):
    probe = _run(runtime_venv, "python", "-c", "import importlib.util as u; "
                 "print([m for m in ('torch', 'monai', 'onnx', 'onnxruntime') if u.find_spec(m)])")
    assert probe.returncode == 0 and probe.stdout.strip() == "['onnxruntime']", probe.stdout + probe.stderr
    assert _run(runtime_venv, "python", "-c", "import torch").returncode != 0

    help_ = _run(runtime_venv, "diffdef-run", "--help")
    assert help_.returncode == 0 and "--overwrite" in help_.stdout, help_.stderr
    run = _run(runtime_venv, "diffdef-run", "--bundle", str(tiny_bundle), "--age", "70", "--sex", "F", "--steps", "1",
               "--out", str(tmp_path / "atlases"))
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "atlases" / "age-70_sex-F" / "atlas.nii.gz").is_file()

    for command, extras in TRAINING_COMMANDS.items():
        for args in (["--help"], ["all", "--preset", "tiny", "--out", str(tmp_path / "run")]):
            proc = _run(runtime_venv, command, *args, cwd=tmp_path)
            lines = proc.stderr.strip().splitlines()
            assert proc.returncode == 1, (command, proc.stdout, proc.stderr)
            assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
            assert lines[0].startswith(f"error: {command} needs the ") and "no module torch" in lines[0]
            assert f'pip install "diffdef[{extras}]"' in lines[0]
    assert not (tmp_path / "run").exists()
