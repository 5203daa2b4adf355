"""``diffdef-run`` owns its output: whole folders from one run (run id), a lock on ``--out``, exact folder names,
permissions that follow the umask.

The faults are reproduced as they were found: a real ``diffdef-run`` process SIGKILLed while it writes over an
earlier run's ``--out``, and two real processes started on the same ``--out``.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from diffdef_runtime import atomic
from diffdef_runtime.outfolder import LOCK_NAME
from diffdef_runtime.outputs import check_folder, condition_label, duplicate_labels, load_record, write_result
from diffdef_runtime.pipeline import AtlasResult

GRID = (6, 8, 7)


def _result(age: float, seed: int = 0) -> AtlasResult:
    rng = np.random.default_rng(seed)
    dvf = (0.1 * rng.standard_normal((3, *GRID))).astype(np.float32)
    return AtlasResult(condition={"age": age}, atlas=rng.random(GRID).astype(np.float32), dvf=dvf,
                       jacobian=np.ones(GRID, np.float32), ventricle_volume_ml=1.0, seed=seed, steps=1,
                       sampler="ddim", samples=1, guidance=1.0, backend="ort", timings_s={})


def _run(bundle: Path, out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "diffdef_runtime.cli", "--bundle", str(bundle), "--sex", "F", "--steps", "1",
            "--out", str(out), *args]


def _folders(out: Path) -> list[Path]:
    """The condition folders (a series also writes summary.png, volumes.png and index.html beside them)."""
    return sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1")


# ------------------------------------------------------------------------------------------------ folder names
def test_distinct_conditions_get_distinct_folders():
    assert condition_label({"age": 70.0}) == "age-70"  # ordinary values keep their short names
    assert condition_label({"age": 70.000001}) == "age-70.000001"  # %g would have said age-70
    assert condition_label({"age": 70.5, "sex": 1.0}) == "age-70.5_sex-M"
    ages = [70.0, 70.000001, 70 + 1e-12, 1e-7, 123456.7]
    labels = [condition_label({"age": a}) for a in ages]
    assert len(set(labels)) == len(ages)
    assert [float(label.split("-", 1)[1]) for label in labels] == ages  # names read back exactly
    assert duplicate_labels([{"age": 70.0}, {"age": 70.000001}]) == []
    assert duplicate_labels([{"age": 70.0}, {"age": 60.0}, {"age": 70.0}]) == ["age-70"]


# ------------------------------------------------------------------------------------------------ one folder
def test_folder_is_replaced_whole_and_names_its_run(tmp_path):
    first = write_result(_result(70, seed=1), np.eye(4), tmp_path, run_id="aaaa")
    second = write_result(_result(70, seed=2), np.eye(4), tmp_path, run_id="bbbb")
    assert first == second == tmp_path / "age-70"
    assert check_folder(second) == "bbbb"
    record = load_record(second)
    assert record["seed"] == 2 and sorted(record["files"]) == ["atlas.nii.gz", "dvf.nii.gz", "jacobian.nii.gz",
                                                               "preview.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["age-70"]  # no staging or old folder left
    # a file from another run is detected by its hash
    other = write_result(_result(70, seed=3), np.eye(4), tmp_path / "other", run_id="cccc")
    (second / "dvf.nii.gz").write_bytes((other / "dvf.nii.gz").read_bytes())
    with pytest.raises(ValueError, match="dvf.nii.gz is not the file run bbbb wrote"):
        check_folder(second)


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_outputs_follow_the_umask(tmp_path, umask, file_mode, dir_mode):
    previous = os.umask(umask)
    try:
        folder = write_result(_result(70), np.eye(4), tmp_path / "out")
        atomic.write_json(tmp_path / "plain.json", {"a": 1})
    finally:
        os.umask(previous)
    assert stat.S_IMODE(folder.stat().st_mode) == dir_mode
    for path in [*folder.iterdir(), tmp_path / "plain.json"]:
        assert stat.S_IMODE(path.stat().st_mode) == file_mode, path.name


# ------------------------------------------------------------------------------------------------ real processes
def test_sigkill_while_overwriting_leaves_only_whole_folders(tiny_bundle, tmp_path):
    """Run 1 writes 41 folders; run 2 (--overwrite, another seed) is SIGKILLed after its first folders. Every
    folder is then wholly from run 1 or wholly from run 2 (files match record.json's hashes and run id)."""
    out = tmp_path / "atlases"
    ages = "45:85:1"
    done = subprocess.run(_run(tiny_bundle, out, "--age", ages, "--seed", "1"), env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    folders = _folders(out)
    assert len(folders) == 41
    old_run = {check_folder(f) for f in folders}
    assert len(old_run) == 1

    proc = subprocess.Popen(_run(tiny_bundle, out, "--age", ages, "--seed", "2", "--overwrite"), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if any(load_record(f)["seed"] == 2 for f in _folders(out) if (f / "record.json").is_file()):
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "run 2 finished before it was killed"

    folders = _folders(out)
    runs = {f.name: check_folder(f) for f in folders}  # raises on any folder mixing two runs
    seeds = {load_record(f)["seed"] for f in folders}
    new_run = set(runs.values()) - old_run
    assert len(new_run) == 1 and seeds == {1, 2}, (runs, seeds)
    assert 1 <= sum(r in new_run for r in runs.values()) < 41  # killed midway
    assert len(folders) >= 40  # at most the one folder being swapped at the kill is absent
    for f in folders:
        assert load_record(f)["seed"] == (2 if runs[f.name] in new_run else 1)

    # the next run into the same place removes what the killed one left (hidden staging / old folders)
    again = subprocess.run(_run(tiny_bundle, out, "--age", "45", "--overwrite"), env=_env(), capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_two_processes_on_one_out(tiny_bundle, tmp_path):
    """The second run fails at once naming the first; with --wait it runs after it. No folder mixes runs."""
    out = tmp_path / "atlases"
    ages = "45:85:5"
    # 4 samples per condition: the first run holds the lock for seconds, far longer than the second needs to start
    first = subprocess.Popen(_run(tiny_bundle, out, "--age", ages, "--seed", "1", "--samples", "4"), env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / LOCK_NAME).exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    second = subprocess.run(_run(tiny_bundle, out, "--age", ages, "--seed", "2", "--overwrite"), env=_env(),
                            capture_output=True, text=True, timeout=600)
    assert first.poll() is None, "the first run ended before the second was refused: no overlap was tested"
    assert second.returncode == 1
    assert f"output folder {out} is in use by diffdef-run pid {first.pid}" in second.stderr
    assert "Traceback" not in second.stderr
    waiter = subprocess.Popen(_run(tiny_bundle, out, "--age", ages, "--seed", "3", "--overwrite", "--wait"),
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert first.wait(timeout=600) == 0, first.stderr.read()[-2000:]
    assert waiter.wait(timeout=600) == 0, waiter.stderr.read()[-2000:]
    folders = _folders(out)
    assert len(folders) == 9
    runs = {check_folder(f) for f in folders}
    assert len(runs) == 1 and {load_record(f)["seed"] for f in folders} == {3}  # the waiter wrote last, whole
    assert not (out / LOCK_NAME).exists()


# ------------------------------------------------------------------------------------------------ distinct folders
def test_near_equal_ages_write_two_folders(tiny_bundle, tmp_path):
    from click.testing import CliRunner

    from diffdef_runtime.cli import main as cli

    out = tmp_path / "o"
    result = CliRunner().invoke(cli, ["--bundle", str(tiny_bundle), "--sex", "F", "--steps", "1", "--age",
                                      "70,70.000001", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert [f.name for f in _folders(out)] == ["age-70.000001_sex-F", "age-70_sex-F"]
    ages = sorted(load_record(f)["condition"]["age"] for f in _folders(out))
    assert ages == [70.0, 70.000001]
    assert len({check_folder(f) for f in _folders(out)}) == 1
    assert json.loads((out / "age-70_sex-F" / "record.json").read_text())["run_id"] in result.output
