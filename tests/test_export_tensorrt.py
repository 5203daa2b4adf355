"""TensorRT engine building: the parts that run anywhere, and a GPU test skipped without TensorRT and CUDA."""

from __future__ import annotations

import json
import sys

import pytest

from diffdef_export import tensorrt_build
from diffdef_export.errors import TensorRTUnavailableError
from diffdef_runtime.bundle import Bundle


def test_missing_tensorrt_is_reported_exactly(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(TensorRTUnavailableError, match="`import tensorrt` failed"):
        tensorrt_build.require_tensorrt()


def test_engine_key_changes_with_every_ingredient():
    base = dict(onnx_sha256="a" * 64, trt_version="11.2.0", gpu="NVIDIA H100", precision="fp16",
                shapes={"latents": [1, 3, 20, 28, 20]})
    key = tensorrt_build.engine_key(**base)
    for field, value in (("onnx_sha256", "b" * 64), ("trt_version", "11.1.0"), ("gpu", "NVIDIA H200"),
                         ("precision", "fp32"), ("shapes", {"latents": [2, 3, 20, 28, 20]})):
        assert tensorrt_build.engine_key(**{**base, field: value}) != key, field


def test_static_shapes_from_the_interface(tiny_bundle):
    bundle = Bundle.open(tiny_bundle)
    shapes = tensorrt_build.static_shapes(bundle.interface("warp"), batch=3)
    assert shapes == {"image": [3, 2, 40, 56, 40], "dvf": [3, 3, 40, 56, 40]}
    assert tensorrt_build.static_shapes(bundle.interface("unet"), 1)["timesteps"] == [1]


@pytest.mark.tensorrt
def test_build_engines_with_cache_and_sidecars(tiny_bundle_fp16, tmp_path):
    trt = pytest.importorskip("tensorrt")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    import shutil

    bundle_dir = tmp_path / "b"
    shutil.copytree(tiny_bundle_fp16, bundle_dir)
    built = tensorrt_build.build_engines(bundle_dir, batch=1)
    assert set(built) == {"unet", "dvf_decoder", "warp"}
    for engine in built.values():
        assert engine.path.is_file() and not engine.cached
        sidecar = json.loads(engine.sidecar.read_text())
        assert sidecar["tensorrt"] == trt.__version__ and sidecar["precision"] == "fp16"
        assert sidecar["gpu"] == torch.cuda.get_device_name(0)
    assert (bundle_dir / "engines" / tensorrt_build.TIMING_CACHE).is_file()
    again = tensorrt_build.build_engines(bundle_dir, batch=1)
    assert all(e.cached for e in again.values())
    Bundle.open(bundle_dir)  # engines/ is not part of the checksummed files
