"""The diffdef-prepare command: a killed run resumes without redoing finished subjects; shards and merge."""

import os
import signal
import subprocess
import sys
import time

import pytest

from prepare_helpers import IXI_IDS, ixi_rows, read_csv, write_table


def _command(table, out, *extra):
    return [sys.executable, "-m", "diffdef.prepare.cli", str(table), "--out", str(out), "--image-column", "image",
            "--labels-column", "labels", "--sex-column", "sex", "--grid", "4mm", *extra]


def test_killed_run_resumes_without_redoing(tmp_path):
    table = write_table(tmp_path / "table.csv", ixi_rows())
    out = tmp_path / "out"
    first = out / "subjects" / f"{sorted(IXI_IDS)[0]}.json"
    proc = subprocess.Popen(_command(table, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 180
        while not first.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert first.exists(), "the first subject's record never appeared"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = sorted(p.name for p in (out / "subjects").glob("*.json"))
    if len(done) == len(IXI_IDS):
        pytest.skip("the run finished before it could be killed")
    image = out / "images" / f"{sorted(IXI_IDS)[0]}.nii.gz"
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (first, image)}
    result = subprocess.run(_command(table, out), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"{len(done)} already done (skipped)" in result.stderr
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in before} == before
    assert sorted(r["id"] for r in read_csv(out / "manifest.csv")) == sorted(IXI_IDS)
    assert not list(out.rglob(".*.tmp*"))  # no temporary file left behind


def test_shards_then_merge(tmp_path):
    table = write_table(tmp_path / "table.csv", ixi_rows(IXI_IDS[:2]))
    out = tmp_path / "out"
    subprocess.run(_command(table, out, "--shard", "1/2"), check=True, capture_output=True, timeout=300)
    assert not (out / "manifest.csv").exists()
    merge = [sys.executable, "-m", "diffdef.prepare.cli", "--merge", str(out)]
    refused = subprocess.run(merge, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and sorted(IXI_IDS[:2])[1] in refused.stderr
    subprocess.run(_command(table, out, "--shard", "2/2"), check=True, capture_output=True, timeout=300)
    subprocess.run(merge, check=True, capture_output=True, timeout=120)
    assert len(read_csv(out / "manifest.csv")) == 2
