"""``--tensorrt``: build TensorRT engines from a bundle's ONNX files, into ``<bundle>/engines/``.

Written against the TensorRT 11 Python API docs (``tensorrt.Builder``, ``create_network``, ``OnnxParser``,
``IBuilderConfig.create_timing_cache``/``set_timing_cache``, ``Builder.build_serialized_network``, optimisation
profiles); never run here (no TensorRT and no GPU on the machines this was written on), so keep it small.

* Strongly typed networks: TensorRT 11 builds only those (the ``STRONGLY_TYPED`` creation flag is deprecated
  and ignored there; it is passed when the enum still has it, for TensorRT 10). The precision is therefore the
  ONNX file's: ``--fp16`` bakes fp16 into the ONNX with fp32 islands (``diffdef_export.fp16``).
* Static shapes by default: one optimisation profile with min = opt = max (batch from ``--tensorrt-batch``,
  the warp's channels = 2: the template T1 and the ventricle map).
* Timing cache: ``engines/timing.cache``, loaded before and saved after every build.
* Engine cache: ``engines/<component>-<key>.engine`` with a JSON sidecar; the key is the sha256 of (ONNX file
  sha256, TensorRT version, GPU name, precision, shapes), so a changed file, TensorRT or GPU builds anew.
* TensorRT < 11.2 has no 5-D GridSample: the warp engine is then built from ``warp_gather.onnx``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from diffdef_export.errors import ExportError, TensorRTUnavailableError
from diffdef_export.trt_supported_ops import GRIDSAMPLE_5D_MIN_VERSION
from diffdef_runtime import atomic
from diffdef_runtime.bundle import Bundle, sha256_file
from diffdef_runtime.interfaces import ModelInterface

log = logging.getLogger(__name__)

ENGINES_DIR = "engines"
TIMING_CACHE = "timing.cache"
WARP_CHANNELS = 2  # the runtime warps [template t1, ventricle_prob] together
WORKSPACE_BYTES = 8 << 30


@dataclasses.dataclass(frozen=True)
class BuiltEngine:
    component: str
    path: Path
    sidecar: Path
    seconds: float
    cached: bool


def require_tensorrt():
    """``(tensorrt module, GPU name)``, or TensorRTUnavailableError saying exactly what is missing."""
    try:
        import tensorrt as trt  # noqa: PLC0415 - optional dependency
    except Exception as err:  # ImportError, or the PyPI stub failing to load its libraries
        raise TensorRTUnavailableError(
            f"--tensorrt needs the TensorRT Python package, and `import tensorrt` failed ({type(err).__name__}: "
            f"{err}). Install TensorRT on the target machine (NVIDIA's wheel for its CUDA), or export without "
            "--tensorrt: engines can also be built later on the GPU machine from the bundle's ONNX files") from None
    gpu = _gpu_name()
    if gpu is None:
        raise TensorRTUnavailableError("--tensorrt needs a CUDA GPU on this machine, and none was found: TensorRT "
                                       "engines are specific to the GPU they are built on; build them on the "
                                       "target machine, or export without --tensorrt")
    return trt, gpu


def _gpu_name() -> str | None:
    try:
        import torch  # noqa: PLC0415

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:  # a broken CUDA install reads as "no GPU"
        return None
    return None


def _version_tuple(version: str) -> tuple[int, int]:
    parts = (version.split(".") + ["0", "0"])[:2]
    return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)


def engine_key(onnx_sha256: str, trt_version: str, gpu: str, precision: str, shapes: dict[str, list[int]]) -> str:
    """The engine cache key: sha256 over what makes an engine valid (first 16 hex digits)."""
    blob = json.dumps({"onnx_sha256": onnx_sha256, "tensorrt": trt_version, "gpu": gpu, "precision": precision,
                       "shapes": shapes}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def static_shapes(interface: ModelInterface, batch: int) -> dict[str, list[int]]:
    """Input name -> concrete shape (batch given; the warp's channels = ``WARP_CHANNELS``)."""
    return {s.name: list(s.concrete(batch=batch, channels=WARP_CHANNELS)) for s in interface.inputs}


def build_engine(trt: Any, onnx_path: Path, shapes: dict[str, list[int]], engine_path: Path,
                 timing_cache_path: Path) -> None:
    """Parse ``onnx_path`` into a strongly typed network and write a serialized engine to ``engine_path``."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is not None:
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {onnx_path.name}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    profile = builder.create_optimization_profile()
    for name, shape in shapes.items():
        profile.set_shape(name, shape, shape, shape)  # static: min = opt = max
    config.add_optimization_profile(profile)
    blob = timing_cache_path.read_bytes() if timing_cache_path.is_file() else b""
    cache = config.create_timing_cache(blob)
    config.set_timing_cache(cache, False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path.name} (see the TensorRT log above)")
    atomic.write_bytes(engine_path, bytes(serialized))
    atomic.write_bytes(timing_cache_path, bytes(config.get_timing_cache().serialize()))


def build_engines(bundle_dir: str | Path, batch: int = 1, force: bool = False) -> dict[str, BuiltEngine]:
    """Build (or reuse from the cache) one engine per component of the bundle, in ``engines/``."""
    if batch < 1:
        raise ExportError(f"--tensorrt-batch must be >= 1, got {batch}")
    trt, gpu = require_tensorrt()
    bundle = Bundle.open(bundle_dir)
    engines = bundle.root / ENGINES_DIR
    engines.mkdir(exist_ok=True)
    version = str(trt.__version__)
    native_5d = _version_tuple(version) >= GRIDSAMPLE_5D_MIN_VERSION
    built = {}
    for name in ("unet", "dvf_decoder", "warp"):
        interface = bundle.interface(name)
        onnx_path = bundle.root / interface.file
        if name == "warp" and not native_5d:
            onnx_path = bundle.root / bundle.interface("warp_gather").file
        unsupported = bundle.manifest.get("tensorrt_unsupported", {}).get(onnx_path.name, [])
        if unsupported and not (unsupported == ["GridSample"] and native_5d):
            raise ExportError(f"{onnx_path.name} uses ops TensorRT {version} cannot parse: {unsupported}")
        shapes = static_shapes(interface, batch)
        onnx_sha = sha256_file(onnx_path)
        key = engine_key(onnx_sha, version, gpu, bundle.precision, shapes)
        engine_path = engines / f"{name}-{key}.engine"
        sidecar = engine_path.with_suffix(".json")
        tic = time.perf_counter()
        cached = engine_path.is_file() and sidecar.is_file() and not force
        if not cached:
            log.info("building TensorRT engine for %s (%s, batch %d)", onnx_path.name, bundle.precision, batch)
            build_engine(trt, onnx_path, shapes, engine_path, engines / TIMING_CACHE)
            atomic.write_json(sidecar, {
                "component": name, "onnx_file": onnx_path.name, "onnx_sha256": onnx_sha, "tensorrt": version,
                "gpu": gpu, "precision": bundle.precision, "shapes": shapes, "strongly_typed": True,
                "engine_sha256": sha256_file(engine_path),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            })
        built[name] = BuiltEngine(name, engine_path, sidecar, time.perf_counter() - tic, cached)
    return built
