"""TensorRT engine building: the parts that run anywhere, and a GPU test skipped without TensorRT and CUDA."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

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
    assert len(list((bundle_dir / "engines").glob("timing-*.cache"))) == 1
    again = tensorrt_build.build_engines(bundle_dir, batch=1)
    assert all(e.cached for e in again.values())
    Bundle.open(bundle_dir)  # engines/ is not part of the checksummed files


# ------------------------------------------------------------------ the build, against a fake tensorrt module
class _FakeConfig:
    def __init__(self, log):
        self.log, self.flags_cleared, self.cache = log, [], None

    def set_memory_pool_limit(self, pool, size):
        pass

    def clear_flag(self, flag):
        self.flags_cleared.append(flag)

    def add_optimization_profile(self, profile):
        pass

    def create_timing_cache(self, blob):
        if blob and not blob.startswith(b"GOOD"):
            raise RuntimeError("invalid timing cache")  # TensorRT's reaction to a foreign/corrupt cache
        return types.SimpleNamespace(serialize=lambda: b"GOOD" + blob[4:] + b".")

    def set_timing_cache(self, cache, ignore_mismatch):
        self.cache = cache
        return True

    def get_timing_cache(self):
        return self.cache


class _FakeBuilder:
    def __init__(self, log):
        self.log = log

    def create_network(self, flags):
        return types.SimpleNamespace()

    def create_builder_config(self):
        config = _FakeConfig(self.log)
        self.log["configs"].append(config)
        return config

    def create_optimization_profile(self):
        return types.SimpleNamespace(set_shape=lambda *a: None)

    def build_serialized_network(self, network, config):
        return b"engine"


def _fake_tensorrt(log: dict):
    """The slice of the TensorRT Python API ``build_engine`` uses, recording what it is asked."""

    class Parser:
        def __init__(self, network, logger):
            self.num_errors = 0

        def parse_from_file(self, path):
            log["parsed"].append(Path(path).name)
            return True

    logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    return types.SimpleNamespace(
        __version__="10.13.0", Logger=logger, Builder=lambda lg: _FakeBuilder(log), OnnxParser=Parser,
        NetworkDefinitionCreationFlag=types.SimpleNamespace(STRONGLY_TYPED=0),
        MemoryPoolType=types.SimpleNamespace(WORKSPACE=0), BuilderFlag=types.SimpleNamespace(TF32="TF32"))


def test_timing_cache_name_is_per_gpu_and_tensorrt_version():
    gpu = tensorrt_build.GpuInfo(0, "NVIDIA H100 80GB HBM3", (9, 0))
    name = tensorrt_build.timing_cache_name(gpu, "11.2.0")
    assert name.startswith("timing-") and name.endswith(".cache")
    assert tensorrt_build.timing_cache_name(tensorrt_build.GpuInfo(1, gpu.name, gpu.capability), "11.2.0") == name
    for other in (tensorrt_build.GpuInfo(0, "NVIDIA A100-SXM4-80GB", (8, 0)),
                  tensorrt_build.GpuInfo(0, gpu.name, (9, 1))):
        assert tensorrt_build.timing_cache_name(other, "11.2.0") != name
    assert tensorrt_build.timing_cache_name(gpu, "11.1.0") != name


def test_build_with_fake_tensorrt_clears_tf32_uses_gather_files_and_survives_a_bad_cache(tiny_bundle, tmp_path,
                                                                                           monkeypatch, caplog):
    import shutil

    log = {"parsed": [], "configs": []}
    gpu = tensorrt_build.GpuInfo(1, "Fake GPU", (9, 0))
    monkeypatch.setattr(tensorrt_build, "require_tensorrt", lambda device=0: (_fake_tensorrt(log), gpu))
    bundle_dir = Path(shutil.copytree(tiny_bundle, tmp_path / "b"))
    engines = bundle_dir / "engines"
    engines.mkdir()
    cache = engines / tensorrt_build.timing_cache_name(gpu, "10.13.0")
    cache.write_bytes(b"written by another TensorRT")  # rejected: the build must go on with an empty cache
    with caplog.at_level("WARNING", logger="diffdef_export.tensorrt_build"):
        built = tensorrt_build.build_engines(bundle_dir, batch=1, device=1)
    assert "rejected by TensorRT" in caplog.text
    assert log["parsed"] == ["unet.onnx", "dvf_decoder.onnx", "warp_gather.onnx"]  # no GridSample parsed
    assert len(log["configs"]) == 3 and all(c.flags_cleared == ["TF32"] for c in log["configs"])
    assert cache.read_bytes().startswith(b"GOOD")  # replaced by the new, valid cache
    sidecar = json.loads(built["warp"].sidecar.read_text())
    assert sidecar["onnx_file"] == "warp_gather.onnx" and sidecar["tf32"] is False
    assert sidecar["gpu"] == "Fake GPU" and sidecar["compute_capability"] == [9, 0]
    again = tensorrt_build.build_engines(bundle_dir, batch=1, device=1)
    assert all(e.cached for e in again.values()) and len(log["configs"]) == 3  # engine cache hit


def test_load_timing_cache_reraises_when_even_an_empty_cache_fails():
    class Broken(_FakeConfig):
        def create_timing_cache(self, blob):
            raise RuntimeError("no CUDA context")

    with pytest.raises(RuntimeError, match="no CUDA context"):
        tensorrt_build.load_timing_cache(Broken({}), Path("/nonexistent/timing.cache"))
