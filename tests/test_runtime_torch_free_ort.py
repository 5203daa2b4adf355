"""``diffdef-run`` on the ONNX Runtime backend where torch cannot be imported: the deployment promise."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from torch_blocker import blocked_env, run_blocked

_SNIPPET = textwrap.dedent(
    """
    import importlib.util
    import json
    import sys
    from pathlib import Path

    assert importlib.util.find_spec("torch") is None, "the blocker failed"
    bundle, out = Path({bundle!r}), Path({out!r})

    from diffdef_runtime.cli import main

    try:
        main(["--bundle", str(bundle), "--age", "60,70", "--sex", "F", "--steps", "3", "--samples", "2",
              "--out", str(out / "cli")])
    except SystemExit as stop:  # click's standalone mode ends with SystemExit(0)
        assert stop.code in (0, None), stop.code

    from diffdef_runtime.api import AtlasGenerator

    gen = AtlasGenerator(bundle=bundle)
    results = gen.generate(age=70, sex="F", steps=3, samples=2)
    gen.save(results, out / "api")

    leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "monai", "diffdef", "diffdef_export"))
    print(json.dumps({{"leaked": leaked, "backend": results[0].backend}}))
    """
)


def test_diffdef_run_ort_without_torch(tiny_bundle, tmp_path):
    proc = run_blocked(_SNIPPET.format(bundle=str(tiny_bundle), out=str(tmp_path)), timeout=600)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"leaked": [], "backend": "ort"}
    for folder in ("cli/age-60_sex-F", "cli/age-70_sex-F", "api/age-70_sex-F"):
        for name in ("atlas.nii.gz", "dvf.nii.gz", "jacobian.nii.gz", "preview.png", "record.json"):
            assert (tmp_path / folder / name).is_file(), f"{folder}/{name}"
    for name in ("summary.png", "volumes.png", "index.html"):  # matplotlib figures without torch
        assert (tmp_path / "cli" / name).is_file(), name
    record = json.loads((tmp_path / "cli/age-70_sex-F/record.json").read_text())
    assert record["backend"] == "ort" and record["samples"] == 2 and record["steps"] == 3
    # The CLI and the API agree bit for bit (same seed, same noise, same engines).
    assert (tmp_path / "cli/age-70_sex-F/dvf.nii.gz").read_bytes() != b""
    import nibabel as nib
    import numpy as np

    np.testing.assert_array_equal(np.asarray(nib.load(str(tmp_path / "cli/age-70_sex-F/dvf.nii.gz")).dataobj),
                                  np.asarray(nib.load(str(tmp_path / "api/age-70_sex-F/dvf.nii.gz")).dataobj))


def test_module_entry_point_without_torch(tiny_bundle, tmp_path):
    """``python -m diffdef_runtime.cli``: the same path a console script takes, with torch hidden."""
    proc = subprocess.run([sys.executable, "-m", "diffdef_runtime.cli", "--bundle", str(tiny_bundle), "--age", "70",
                           "--sex", "M", "--steps", "2", "--out", str(tmp_path)],
                          env=blocked_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert (tmp_path / "age-70_sex-M" / "atlas.nii.gz").is_file()
    # The torch backend, asked for explicitly, fails cleanly instead.
    proc = subprocess.run([sys.executable, "-m", "diffdef_runtime.cli", "--bundle", str(tiny_bundle), "--age", "70",
                           "--sex", "M", "--backend", "torch", "--out", str(tmp_path / "t")],
                          env=blocked_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "PyTorch" in proc.stderr and "Traceback" not in proc.stderr
