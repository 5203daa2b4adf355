"""``--tensorrt``: build TensorRT engines from a bundle's ONNX files, into ``<bundle>/engines/``.

Written against the TensorRT 11 Python API docs (``tensorrt.Builder``, ``create_network``, ``OnnxParser``,
``IBuilderConfig.create_timing_cache``/``set_timing_cache``, ``Builder.build_serialized_network``, optimisation
profiles); never run here (no TensorRT and no GPU on the machines this was written on), so keep it small.

* Strongly typed networks: TensorRT 11 builds only those (the ``STRONGLY_TYPED`` creation flag is deprecated
  and ignored there; it is passed when the enum still has it, for TensorRT 10). The precision is therefore the
  ONNX file's: ``--fp16`` bakes fp16 into the ONNX with fp32 islands (``diffdef_export.fp16``). TF32 is on by
  default in TensorRT (``BuilderFlag.TF32``, "enabled by default" in the API docs) and is cleared, so that fp32
  layers (all of an fp32 bundle, the islands of an fp16 one) really run in fp32.
* No GridSample reaches TensorRT: the warp engine is built from ``warp_gather.onnx`` and a diffeomorphic
  decoder's from ``dvf_decoder_gather.onnx`` (Gather arithmetic). TensorRT < 11.2 cannot parse 5-D GridSample,
  and the onnx-tensorrt importer reads opset-20's ``mode="linear"`` as nearest without a warning
  (NVIDIA/TensorRT#4646, onnx/onnx-tensorrt#1060), so the Gather files are used for every version.
* Static shapes by default: one optimisation profile with min = opt = max (batch from ``--tensorrt-batch``,
  the warp's channels = 2: the template T1 and the ventricle map).
* Timing cache: ``engines/timing-<key>.cache`` per GPU (name and compute capability) and TensorRT version,
  loaded before and saved after every build; a cache TensorRT rejects is replaced by an empty one (warning).
* Engine cache: ``engines/<component>-<key>.engine`` with a JSON sidecar; the key is the sha256 of (ONNX file
  sha256, TensorRT version, GPU name, precision, shapes), so a changed file, TensorRT or GPU builds anew.
* ``device``: the CUDA device index the engines are built on (and for).
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
from diffdef_runtime import atomic
from diffdef_runtime.bundle import Bundle, sha256_file
from diffdef_runtime.interfaces import ModelInterface

log = logging.getLogger(__name__)

ENGINES_DIR = "engines"
WARP_CHANNELS = 2  # the runtime warps [template t1, ventricle_prob] together
WORKSPACE_BYTES = 8 << 30


@dataclasses.dataclass(frozen=True)
class BuiltEngine:
    component: str
    path: Path
    sidecar: Path
    seconds: float
    cached: bool


@dataclasses.dataclass(frozen=True)
class GpuInfo:
    """The CUDA device engines are built on: index, name (as ``torch.cuda.get_device_name``), compute
    capability (major, minor)."""

    index: int
    name: str
    capability: tuple[int, int]


def require_tensorrt(device: int = 0):
    """``(tensorrt module, GpuInfo of CUDA device ``device``)``, or TensorRTUnavailableError saying exactly what
    is missing."""
    try:
        import tensorrt as trt  # noqa: PLC0415 - optional dependency
    except Exception as err:  # ImportError, or the PyPI stub failing to load its libraries
        raise TensorRTUnavailableError(
            f"--tensorrt needs the TensorRT Python package, and `import tensorrt` failed ({type(err).__name__}: "
            f"{err}). Install TensorRT on the target machine (NVIDIA's wheel for its CUDA), or export without "
            "--tensorrt: engines can also be built later on the GPU machine from the bundle's ONNX files") from None
    gpu = _gpu_info(device)
    if gpu is None:
        raise TensorRTUnavailableError(f"--tensorrt needs a CUDA GPU (device {device}) on this machine, and none "
                                       "was found: TensorRT engines are specific to the GPU they are built on; "
                                       "build them on the target machine, or export without --tensorrt")
    return trt, gpu


def _gpu_info(device: int) -> GpuInfo | None:
    """Device ``device`` made current (TensorRT builds on the current device), or None without CUDA."""
    try:
        import torch  # noqa: PLC0415

        if torch.cuda.is_available() and 0 <= device < torch.cuda.device_count():
            torch.cuda.set_device(device)
            return GpuInfo(device, torch.cuda.get_device_name(device), tuple(torch.cuda.get_device_capability(device)))
    except Exception:  # a broken CUDA install reads as "no GPU"
        return None
    return None


def timing_cache_name(gpu: GpuInfo, trt_version: str) -> str:
    """``timing-<16 hex>.cache``: one timing cache per GPU model (name, compute capability) and TensorRT version,
    since TensorRT rejects (or mis-times with) a cache from another GPU or version."""
    blob = json.dumps({"gpu": gpu.name, "capability": list(gpu.capability), "tensorrt": trt_version})
    return f"timing-{hashlib.sha256(blob.encode()).hexdigest()[:16]}.cache"


def load_timing_cache(config: Any, path: Path) -> Any:
    """Attach the timing cache at ``path`` to ``config``; a missing file starts empty, and a file TensorRT rejects
    (corrupt, or from another GPU/TensorRT) is logged and replaced by an empty cache instead of failing the build."""
    blob = path.read_bytes() if path.is_file() else b""
    try:
        cache = config.create_timing_cache(blob)
        if cache is None:
            raise RuntimeError("create_timing_cache returned None")
        if not config.set_timing_cache(cache, False):
            raise RuntimeError("set_timing_cache refused it")
    except Exception as err:  # noqa: BLE001 - TensorRT raises various types for a bad cache
        if not blob:
            raise
        log.warning("timing cache %s rejected by TensorRT (%s); building with an empty cache", path, err)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
    return cache


def engine_key(onnx_sha256: str, trt_version: str, gpu: str, precision: str, shapes: dict[str, list[int]]) -> str:
    """The engine cache key: sha256 over what makes an engine valid (first 16 hex digits)."""
    blob = json.dumps({"onnx_sha256": onnx_sha256, "tensorrt": trt_version, "gpu": gpu, "precision": precision,
                       "shapes": shapes}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def static_shapes(interface: ModelInterface, batch: int) -> dict[str, list[int]]:
    """Input name -> concrete shape (batch given; the warp's channels = ``WARP_CHANNELS``)."""
    return {s.name: list(s.concrete(batch=batch, channels=WARP_CHANNELS)) for s in interface.inputs}


def tensorrt_onnx_file(bundle: Bundle, name: str) -> Path:
    """The ONNX file TensorRT builds component ``name`` from: the Gather twin where the bundle has one
    (``warp_gather.onnx``, ``dvf_decoder_gather.onnx``), so that no GridSample is parsed (module docstring).
    ExportError if the chosen file still holds a GridSample (a bundle exported before the decoder twin existed)."""
    twin = f"{name}_gather"
    chosen = twin if twin in bundle.manifest.get("interfaces", {}) else name
    path = bundle.root / bundle.interface(chosen).file
    if "GridSample" in bundle.manifest.get("operators", {}).get(path.name, {}):
        raise ExportError(f"{path.name} holds a GridSample, which TensorRT cannot import correctly (5-D needs "
                          "TensorRT >= 11.2, and mode 'linear' is read as nearest): re-export the bundle with this "
                          "version of diffdef-export, which writes a Gather-based twin for TensorRT")
    return path


def build_engine(trt: Any, onnx_path: Path, shapes: dict[str, list[int]], engine_path: Path,
                 timing_cache_path: Path) -> None:
    """Parse ``onnx_path`` into a strongly typed network (TF32 off) and write a serialized engine to
    ``engine_path``."""
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
    config.clear_flag(trt.BuilderFlag.TF32)  # on by default; fp32 layers must not round inputs to 10 bits
    profile = builder.create_optimization_profile()
    for name, shape in shapes.items():
        profile.set_shape(name, shape, shape, shape)  # static: min = opt = max
    config.add_optimization_profile(profile)
    load_timing_cache(config, timing_cache_path)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path.name} (see the TensorRT log above)")
    atomic.write_bytes(engine_path, bytes(serialized))
    atomic.write_bytes(timing_cache_path, bytes(config.get_timing_cache().serialize()))


def build_engines(bundle_dir: str | Path, batch: int = 1, force: bool = False, device: int = 0
                  ) -> dict[str, BuiltEngine]:
    """Build (or reuse from the cache) one engine per component of the bundle, in ``engines/``, on CUDA device
    ``device``."""
    if batch < 1:
        raise ExportError(f"--tensorrt-batch must be >= 1, got {batch}")
    trt, gpu = require_tensorrt(device)
    bundle = Bundle.open(bundle_dir)
    engines = bundle.root / ENGINES_DIR
    engines.mkdir(exist_ok=True)
    version = str(trt.__version__)
    timing_cache = engines / timing_cache_name(gpu, version)
    built = {}
    for name in ("unet", "dvf_decoder", "warp"):
        interface = bundle.interface(name)
        onnx_path = tensorrt_onnx_file(bundle, name)
        unsupported = bundle.manifest.get("tensorrt_unsupported", {}).get(onnx_path.name, [])
        if unsupported:
            raise ExportError(f"{onnx_path.name} uses ops TensorRT {version} cannot parse: {unsupported}")
        shapes = static_shapes(interface, batch)
        onnx_sha = sha256_file(onnx_path)
        key = engine_key(onnx_sha, version, gpu.name, bundle.precision, shapes)
        engine_path = engines / f"{name}-{key}.engine"
        sidecar = engine_path.with_suffix(".json")
        tic = time.perf_counter()
        cached = engine_path.is_file() and sidecar.is_file() and not force
        if not cached:
            log.info("building TensorRT engine for %s (%s, batch %d, GPU %d %s)", onnx_path.name, bundle.precision,
                     batch, gpu.index, gpu.name)
            build_engine(trt, onnx_path, shapes, engine_path, timing_cache)
            atomic.write_json(sidecar, {
                "component": name, "onnx_file": onnx_path.name, "onnx_sha256": onnx_sha, "tensorrt": version,
                "gpu": gpu.name, "compute_capability": list(gpu.capability), "precision": bundle.precision,
                "shapes": shapes, "strongly_typed": True, "tf32": False, "engine_sha256": sha256_file(engine_path),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            })
        built[name] = BuiltEngine(name, engine_path, sidecar, time.perf_counter() - tic, cached)
    return built
