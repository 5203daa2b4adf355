"""The TensorRT backend. Without tensorrt (all our machines) only the refusals are tested; the engine tests are
marked ``tensorrt`` and skip themselves."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from diffdef_runtime.backends.tensorrt import NEED_TENSORRT, check_sidecar, find_engine

HAVE_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def _fake_engine(bundle: Path, name: str, batch: int, **overrides) -> Path:
    """An engine file (random bytes) and a sidecar as ``diffdef_export.tensorrt_build`` writes them."""
    from diffdef_runtime.bundle import Bundle, sha256_file

    opened = Bundle.open(bundle)
    folder = bundle / "engines"
    folder.mkdir(exist_ok=True)
    engine = folder / f"{name}-{batch:016d}.engine"
    engine.write_bytes(np.random.default_rng(batch).bytes(64))
    onnx_file = opened.interface(name).file
    sidecar = {"component": name, "onnx_file": onnx_file, "onnx_sha256": opened.manifest["files"][onnx_file],
               "tensorrt": "11.2.0", "gpu": "NVIDIA H100 80GB HBM3", "precision": opened.precision,
               "shapes": {s.name: list(s.concrete(batch=batch, channels=2)) for s in opened.interface(name).inputs},
               "engine_sha256": sha256_file(engine), **overrides}
    engine.with_suffix(".json").write_text(json.dumps(sidecar))
    return engine


def test_engine_lookup_refuses_stale_or_foreign_engines(tiny_bundle, tmp_path):
    from diffdef_runtime.bundle import Bundle

    root = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    here = dict(tensorrt_version="11.2.0", gpu="NVIDIA H100 80GB HBM3")
    with pytest.raises(RuntimeError, match="no TensorRT engine for 'unet'.*rebuild"):
        find_engine(Bundle.open(root), "unet", **here)

    _fake_engine(root, "unet", 1, tensorrt="11.1.0")
    with pytest.raises(RuntimeError, match=r"TensorRT version '11\.1\.0'.*'11\.2\.0'.*rebuild"):
        find_engine(Bundle.open(root), "unet", **here)
    _fake_engine(root, "unet", 1, gpu="NVIDIA A100-SXM4-80GB")
    with pytest.raises(RuntimeError, match="GPU 'NVIDIA A100-SXM4-80GB'.*rebuild"):
        find_engine(Bundle.open(root), "unet", **here)
    _fake_engine(root, "unet", 1, onnx_sha256="0" * 64)  # built from an older unet.onnx
    with pytest.raises(RuntimeError, match="ONNX file sha256"):
        find_engine(Bundle.open(root), "unet", **here)
    broken = _fake_engine(root, "unet", 1)
    broken.write_bytes(b"truncated")
    with pytest.raises(RuntimeError, match="checksum mismatch.*unet-0+1.engine"):
        find_engine(Bundle.open(root), "unet", **here)

    _fake_engine(root, "unet", 2)
    _fake_engine(root, "unet", 4)
    path, sidecar = find_engine(Bundle.open(root), "unet", **here)
    assert path.name == f"unet-{4:016d}.engine" and sidecar["shapes"]["latents"][0] == 4  # the largest batch
    with pytest.raises(RuntimeError, match="sidecar has no 'gpu'"):
        check_sidecar({"tensorrt": "11.2.0"}, root / "engines" / "x.json", onnx_sha256="a", tensorrt_version="11.2.0",
                      gpu="g")


@pytest.mark.skipif(HAVE_TENSORRT, reason="tensorrt is installed")
def test_missing_tensorrt_is_a_clear_error(tmp_path):
    from diffdef_runtime.backends.tensorrt import TensorRTEngines

    with pytest.raises(RuntimeError) as err:
        TensorRTEngines(bundle=None)  # fails at the import, before touching the bundle
    assert NEED_TENSORRT in str(err.value) and "--backend ort" in str(err.value)


@pytest.mark.skipif(HAVE_TENSORRT, reason="tensorrt is installed")
def test_cli_tensorrt_without_tensorrt(tiny_bundle):
    from click.testing import CliRunner

    from diffdef_runtime.cli import main

    result = CliRunner().invoke(main, ["--bundle", str(tiny_bundle), "--age", "70", "--sex", "F",
                                       "--backend", "tensorrt"])
    assert result.exit_code != 0 and "--backend ort" in result.output and "Traceback" not in result.output


def _cuda_available() -> bool:
    if not HAVE_TENSORRT:
        return False
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            return False
    err, count = cudart.cudaGetDeviceCount()
    return int(err) == 0 and count > 0


needs_tensorrt = pytest.mark.skipif(not _cuda_available(), reason="needs tensorrt, cuda-python and an NVIDIA GPU")


@pytest.mark.tensorrt
@needs_tensorrt
def test_tensorrt_matches_ort(tiny_bundle, tmp_path):
    from diffdef_export.tensorrt_build import build_engines

    from diffdef_runtime.backends import open_model
    from diffdef_runtime.pipeline import generate

    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    build_engines(bundle, batch=2)
    conditions = {"age": [50, 60, 70], "sex": "F"}  # 3 rows: one full chunk of 2 and one padded
    trt_model, ort_model = open_model("tensorrt", bundle=bundle), open_model("ort", bundle=bundle)
    a = generate(trt_model.engines, trt_model.info, trt_model.template, conditions, steps=5)
    b = generate(ort_model.engines, ort_model.info, ort_model.template, conditions, steps=5)
    for ra, rb in zip(a, b):
        assert np.abs(ra.dvf - rb.dvf).max() < 1e-2
        # the warped template too: a warp engine that interpolated with nearest neighbours (GridSample's
        # "linear" misread) would show here, not in the DVF
        assert np.abs(ra.atlas - rb.atlas).max() < 1e-3
        assert abs(ra.ventricle_volume_ml - rb.ventricle_volume_ml) < 1e-2 * max(rb.ventricle_volume_ml, 1.0)
    again = generate(trt_model.engines, trt_model.info, trt_model.template, conditions, steps=5)  # graph replay
    np.testing.assert_array_equal(again[0].dvf, a[0].dvf)


def test_device_index_parsing():
    from diffdef_runtime.backends.tensorrt import device_index

    assert device_index("cuda:1") == 1 and device_index("cuda") == 0 and device_index("cpu") == 0
    assert device_index(3) == 3
    with pytest.raises(ValueError):
        device_index("cuda:x")
    with pytest.raises(ValueError):
        device_index(-1)


def test_open_model_passes_the_device_to_tensorrt(tiny_bundle, monkeypatch):
    import diffdef_runtime.backends.tensorrt as trt_backend
    from diffdef_runtime.backends import open_model

    seen = {}

    class Recorder:
        name = "tensorrt"

        def __init__(self, bundle, device=0):
            seen["device"] = device

    monkeypatch.setattr(trt_backend, "TensorRTEngines", Recorder)
    open_model("tensorrt", bundle=tiny_bundle, device="cuda:1")
    assert seen["device"] == "cuda:1"


def test_tensorrt_engines_select_the_requested_gpu(tiny_bundle, monkeypatch):
    """``--device cuda:1``: cudaSetDevice(1) before anything else, and device 1's name checked against the
    engines (with fake tensorrt/cuda modules; no engines exist, so it stops at the engine lookup)."""
    import types

    import diffdef_runtime.backends.tensorrt as trt_backend
    from diffdef_runtime.bundle import Bundle

    calls = []
    cudart = types.SimpleNamespace(
        cudaSetDevice=lambda i: calls.append(("set", i)) or (0,),
        cudaGetDeviceProperties=lambda i: calls.append(("props", i)) or (0, types.SimpleNamespace(name=b"GPU1\x00")),
        cudaGetErrorName=lambda e: (0, b"err"))
    monkeypatch.setattr(trt_backend, "_import", lambda: (types.SimpleNamespace(__version__="11.2.0"), cudart))
    with pytest.raises(RuntimeError, match="no TensorRT engine"):
        trt_backend.TensorRTEngines(Bundle.open(tiny_bundle), device="cuda:1")
    assert calls == [("set", 1), ("props", 1)]
