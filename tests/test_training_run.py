"""Training end to end on the tiny preset: resume after a real SIGKILL, DDP under torchrun, generation."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
TRAIN = [sys.executable, "-m", "diffdef.training.cli"]


def _state_step(out: Path, stage: str) -> int:
    with safe_open(str(out / "state" / f"{stage}.safetensors"), framework="pt") as handle:
        return int(handle.metadata()["step"])


def _train(out: Path, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([*TRAIN, *extra, "--preset", "tiny", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_run")
    result = _train(out, "all")
    assert result.returncode == 0, result.stderr[-3000:]
    (out / "train.stderr").write_text(result.stderr)
    return out


def test_registration_network_is_checked_after_its_stage(tiny_run):
    # diffdef-train scores the network on held-out known-field pairs; the tiny one (6 steps) does not register,
    # so it is also warned about.
    stderr = (tiny_run / "train.stderr").read_text()
    assert "registration network on held-out known-field pairs: end-point error" in stderr
    assert "the registration network barely registers" in stderr


def test_all_stages_write_strict_checkpoints(tiny_run):
    for name in ("autoencoder", "registration", "denoiser", "dvf_decoder"):
        assert (tiny_run / f"{name}.safetensors").is_file()
        assert json.loads((tiny_run / f"{name}.json").read_text())["format_version"] == 1
    assert json.loads((tiny_run / "progress.json").read_text())["completed"] == ["ae", "reg", "ldm"]
    model = json.loads((tiny_run / "model.json").read_text())
    assert model["conditions"]["names"] == ["age", "sex"] and model["latent_scale"] > 0
    # The trained DVF head and field basis moved away from their zero initialisation (warm-up, L_morph, bending).
    weights = load_file(str(tiny_run / "dvf_decoder.safetensors"))
    last = max(int(k.split(".")[2]) for k in weights if k.startswith("decoder.blocks."))
    assert float(weights[f"decoder.blocks.{last}.conv.weight"].abs().max()) > 0
    assert weights[f"decoder.blocks.{last}.conv.weight"].shape[0] == 3  # the head, not a copied layer
    assert float(weights["basis.fields"].abs().max()) > 0
    # Latent centring is on by default: the decoder keeps the population-mean latent of the 4 mm grid (5x7x5).
    decoder = json.loads((tiny_run / "dvf_decoder.json").read_text())["config"]
    assert decoder["latent_shape"] == [5, 7, 5]
    mean = load_file(str(tiny_run / "dvf_decoder.safetensors"))["latent_mean"]
    assert mean.shape == (1, 3, 5, 7, 5) and float(mean.abs().mean()) > 0


def test_completed_stage_is_skipped(tiny_run):
    before = (tiny_run / "denoiser.safetensors").stat().st_mtime_ns
    result = _train(tiny_run, "ldm")
    assert result.returncode == 0
    assert "already complete" in result.stderr
    assert (tiny_run / "denoiser.safetensors").stat().st_mtime_ns == before


def test_changed_config_refuses_to_resume(tmp_path):
    out = tmp_path / "run"
    assert _train(out, "ae", "--set", "ae.steps=4").returncode == 0
    # Pretend the stage was interrupted: forget it was completed, then change its configuration.
    (out / "progress.json").write_text(json.dumps({"completed": []}))
    result = _train(out, "ae", "--set", "ae.steps=4", "--set", "ae.lr=0.1")
    assert result.returncode != 0
    assert "different configuration" in result.stderr


def test_killed_run_resumes_to_the_same_result(tmp_path):
    steps = "ae.steps=60"
    reference = tmp_path / "reference"
    assert _train(reference, "ae", "--set", steps).returncode == 0

    killed = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([*TRAIN, "ae", "--preset", "tiny", "--set", steps, "--out", str(killed)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = killed / "state" / "ae.safetensors"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if state.exists() and _state_step(killed, "ae") >= 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed; raise ae.steps"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted_at = _state_step(killed, "ae")
    assert 0 < interrupted_at < 60
    assert not (killed / "autoencoder.safetensors").exists()

    result = _train(killed, "ae", "--set", steps)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resuming stage ae at step {interrupted_at}" in result.stderr
    assert _state_step(killed, "ae") == _state_step(reference, "ae") == 60
    a = load_file(str(reference / "autoencoder.safetensors"))
    b = load_file(str(killed / "autoencoder.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), rtol=1e-5, atol=1e-6, err_msg=key)


def test_torchrun_two_processes_on_cpu(tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "diffdef.training.cli", "reg", "--preset", "tiny", "--set", "reg.steps=4",
           "--set", "run.grad_accumulation=2", "--out", str(out)]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _state_step(out, "reg") == 4
    assert (out / "registration.safetensors").is_file()
    assert "rank 1 of 2" in result.stderr


def test_reference_generation_from_checkpoint(tiny_run, tmp_path):
    from diffdef.generate import generate_atlases

    a = generate_atlases(tiny_run, {"age": [40, 70], "sex": "F"}, steps=3, seed=5)
    b = generate_atlases(tiny_run, {"age": [70], "sex": "F"}, steps=3, seed=5)
    assert len(a) == 2 and a[0].atlas.shape == (40, 56, 40) and a[0].dvf.shape == (3, 40, 56, 40)
    # Same seed -> same draw, alone or in a list (to float precision: CPU convolutions pick different kernels
    # for batch 1 and batch 2, so the last bits differ).
    np.testing.assert_allclose(a[1].dvf, b[0].dvf, rtol=1e-4, atol=1e-5)
    c = generate_atlases(tiny_run, {"age": [70], "sex": "F"}, steps=3, seed=5)
    np.testing.assert_array_equal(b[0].dvf, c[0].dvf)  # bit for bit with the same batch
    assert not np.allclose(a[0].dvf, a[1].dvf, atol=1e-6)  # ages differ
    assert a[0].condition == {"age": 40.0, "sex": 0.0}


def test_run_cli_with_checkpoint_and_torch_backend(tiny_run, tmp_path):
    import nibabel as nib

    from diffdef_runtime.grid import get_grid

    out = tmp_path / "atlases"
    cmd = [sys.executable, "-m", "diffdef_runtime.cli", "--checkpoint", str(tiny_run), "--backend", "torch",
           "--age", "70", "--sex", "M", "--steps", "3", "--out", str(out)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    folder = out / "age-70_sex-M"
    for name in ("atlas.nii.gz", "dvf.nii.gz", "jacobian.nii.gz", "preview.png", "record.json"):
        assert (folder / name).is_file(), name
    np.testing.assert_allclose(nib.load(str(folder / "atlas.nii.gz")).affine, get_grid("4mm").affine)
    record = json.loads((folder / "record.json").read_text())
    assert record["backend"] == "torch" and record["steps"] == 3 and record["condition"]["age"] == 70.0


def test_model_checks_run_on_a_trained_checkpoint(tiny_run):
    """The registration-accuracy benchmark on the tiny run."""
    import re

    from click.testing import CliRunner
    from file_helpers import load_benchmark

    result = CliRunner().invoke(load_benchmark("registration_accuracy").main,
                                ["--checkpoint", str(tiny_run), "--subjects", "2", "--ages", "30,70",
                                 "--mean-ages", "30,80"])
    assert result.exit_code == 0, result.output
    found = re.search(r"end-point error ([\d.]+) voxels \(([\d.]+) less the identity-pair field, whose mean "
                      r"length is ([\d.]+)\); zero field ([\d.]+)", result.output)
    error, corrected, bias, zero = (float(v) for v in found.groups())
    assert error > 0 and zero > 0 and bias > 0
    # subtracting a field moves each error by at most its length (3 decimals printed)
    assert abs(error - corrected) <= bias + 2e-3
    landscape, mean_table = result.output.split("atlas L_morph aims at")
    assert len(re.findall(r"^\s+(30|70) \|", landscape, flags=re.M)) == 2  # landscape rows
    # check 3: one scored row per age; volumes as is / less the identity-pair field / from the true fields
    mean_rows = re.findall(r"^\s+(30|80) \|\s*[\d.]+/\s*[\d.]+/\s*([\d.]+) \|\s+([\d.]+) \|", mean_table,
                           flags=re.M)
    assert [r[0] for r in mean_rows] == ["30", "80"]
    assert float(mean_rows[1][2]) > 2 * float(mean_rows[0][2])  # true ventricles grow from 30 to 80
    assert float(mean_rows[1][1]) > 1.5 * float(mean_rows[0][1])  # so does the mean of the subjects' true fields
    for name in ("as is", "less the identity-pair field", "true fields \\(no network\\)"):
        assert re.search(rf"{name}: beats the template on ventricle Dice at \d/2 ages, on CSF Dice at \d/2",
                         result.output)
