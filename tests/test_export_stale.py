"""A killed ``diffdef-export`` leaves a hidden staging folder; the next export into the same place removes it
(and keeps the staging folder of an export that is still running)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from diffdef_runtime.bundle import Bundle


def test_next_export_removes_a_killed_exports_staging(tiny_checkpoint, tiny_bundle, tmp_path):
    out = tmp_path / "bundle"
    proc = subprocess.Popen([sys.executable, "-m", "diffdef_export.cli", str(tiny_checkpoint), "-o", str(out)],
                            env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob(f".bundle.partial-{proc.pid}-*")) and time.monotonic() < deadline:
        assert proc.poll() is None, "the export ended before it was killed"
        time.sleep(0.01)
    time.sleep(0.5)  # let it write into the staging folder
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stale = list(tmp_path.glob(".bundle.partial-*"))
    assert len(stale) == 1 and not out.exists()
    running = tmp_path / f".bundle.partial-{os.getppid()}-abc"  # a live process's export: not ours to remove
    running.mkdir()

    from diffdef_export.bundle_writer import export_bundle

    export_bundle(tiny_checkpoint, out)
    assert not stale[0].exists()
    assert running.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == [running.name, "bundle"]
    Bundle.open(out)
