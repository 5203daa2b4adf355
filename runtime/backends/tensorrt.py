"""The TensorRT backend: serialized engines from ``diffdef-export --tensorrt`` (``bundle/engines/``).

Written against the TensorRT 11 Python API (named I/O tensors, ``set_tensor_address``, ``execute_async_v3``)
and cuda-python's runtime bindings (``cuda.bindings.runtime``, as in NVIDIA's samples), and **never run on
our machines**: TensorRT cannot be installed there (docs/ARCHITECTURE.md, DESIGN.md). Only the parts that
need neither (sidecar checks, error messages) are tested here.

Life of an engine (as in NVIDIA's demo/Diffusion): load -> set the (static) input shapes -> allocate one
device buffer per I/O tensor -> ``set_tensor_address`` once -> per call: copy inputs in, ``execute_async_v3``
on one stream (or replay a CUDA graph of it), copy the output out. The denoiser call is captured in a CUDA
graph on first use (shapes are static, so one graph serves every step); if capture fails the engine runs
without a graph and the reason is logged.

Engines (``diffdef_export.tensorrt_build``) are ``engines/<component>-<key>.engine`` with a JSON sidecar
(``component``, ``onnx_file``, ``onnx_sha256``, ``tensorrt``, ``gpu``, ``precision``, ``shapes``,
``engine_sha256``). An engine loads only if its ONNX file is the bundle's current one and its TensorRT version
and GPU are this machine's; otherwise a clear error says to rebuild. Engines have static shapes (batch B,
``--tensorrt-batch``): a larger batch runs in chunks of B, the last one padded.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from diffdef_runtime.bundle import Bundle, sha256_file
from diffdef_runtime.interfaces import ModelInterface

log = logging.getLogger(__name__)

_MODELS = ("unet", "dvf_decoder", "warp")
NEED_TENSORRT = ("the tensorrt backend needs the tensorrt package and an NVIDIA GPU; use --backend ort "
                 "(onnxruntime, CPU or CUDA)")


def rebuild_hint(root: str | Path) -> str:
    return (f"rebuild the engines on this machine: diffdef-export CHECKPOINT -o {root} --tensorrt --force, or "
            f"python -c \"from diffdef_export.tensorrt_build import build_engines; build_engines('{root}')\"")


def check_sidecar(sidecar: dict[str, Any], path: Path, *, onnx_sha256: str | None, tensorrt_version: str,
                  gpu: str) -> None:
    """Refuse an engine built from another ONNX file, by another TensorRT version or for another GPU
    (RuntimeError naming what differs and how to rebuild)."""
    root = path.parent.parent
    for key, current in (("tensorrt", tensorrt_version), ("gpu", gpu), ("onnx_sha256", onnx_sha256)):
        built = sidecar.get(key)
        if built is None:
            raise RuntimeError(f"{path}: the sidecar has no {key!r}; {rebuild_hint(root)}")
        if str(built) != str(current):
            what = {"tensorrt": "TensorRT version", "gpu": "GPU", "onnx_sha256": "ONNX file sha256"}[key]
            raise RuntimeError(f"{path.with_suffix('.engine')} was built for {what} {built!r}, but this machine/bundle "
                               f"has {current!r}; TensorRT engines are specific to both: {rebuild_hint(root)}")


def find_engine(bundle: Bundle, name: str, tensorrt_version: str, gpu: str) -> tuple[Path, dict[str, Any]]:
    """The usable engine of component ``name`` (largest batch if several): ``(engine path, sidecar)``."""
    folder = Path(bundle.root) / "engines"
    sidecars = sorted(folder.glob(f"{name}-*.json"))
    if not sidecars:
        raise RuntimeError(f"no TensorRT engine for {name!r} in {folder}; {rebuild_hint(bundle.root)}")
    files = bundle.manifest.get("files", {})
    usable, problems = [], []
    for path in sidecars:
        sidecar = json.loads(path.read_text())
        if sidecar.get("component") != name:
            continue
        try:
            check_sidecar(sidecar, path, onnx_sha256=files.get(sidecar.get("onnx_file", "")),
                          tensorrt_version=tensorrt_version, gpu=gpu)
        except RuntimeError as err:
            problems.append(str(err))
            continue
        engine = path.with_suffix(".engine")
        if not engine.is_file():
            problems.append(f"{engine} is missing")
        elif sidecar.get("engine_sha256") not in (None, sha256_file(engine)):
            problems.append(f"checksum mismatch for {engine}: the engine file was modified or truncated")
        else:
            usable.append((engine, sidecar))
    if not usable:
        raise RuntimeError(problems[0] if len(problems) == 1 else f"no usable TensorRT engine for {name!r}: "
                           + "; ".join(problems) + f"; {rebuild_hint(bundle.root)}")
    return max(usable, key=lambda item: _batch(item[1]))


def _batch(sidecar: dict[str, Any]) -> int:
    shapes = sidecar.get("shapes") or {}
    return int(next(iter(shapes.values()))[0]) if shapes else 1


def _import():
    try:
        import tensorrt as trt
    except ImportError as err:
        raise RuntimeError(f"{NEED_TENSORRT} (import tensorrt failed: {err})") from err
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError as err:
            raise RuntimeError(f"{NEED_TENSORRT}; also needs cuda-python (pip install cuda-python): {err}") from err
    return trt, cudart


def _call(cudart, result):
    """cuda-python returns ``(error, *values)``: raise on error, return the value(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err} ({cudart.cudaGetErrorName(err)[1]})")
    return values[0] if len(values) == 1 else (values or None)


class _Engine:
    """One deserialized static-shape engine: context, device buffers allocated once, an optional CUDA graph."""

    def __init__(self, trt, cudart, runtime, path: Path, sidecar: dict[str, Any], interface: ModelInterface,
                 stream, use_graph: bool):
        self.cudart, self.interface, self.stream, self.path = cudart, interface, stream, path
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {path}; {rebuild_hint(path.parent.parent)}")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        declared = [s.name for s in (*interface.inputs, *interface.outputs)]
        if sorted(names) != sorted(declared):
            raise RuntimeError(f"{path}: engine tensors {names} differ from the manifest's {declared}; "
                               + rebuild_hint(path.parent.parent))
        self.shapes = {name: tuple(shape) for name, shape in sidecar["shapes"].items()}  # static input shapes
        self.batch = _batch(sidecar)
        for name, shape in self.shapes.items():
            self.context.set_input_shape(name, shape)
        self.host: dict[str, np.ndarray] = {}
        self.device: dict[str, int] = {}
        for spec in (*interface.inputs, *interface.outputs):
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(spec.name)))
            if dtype != np.dtype(spec.dtype):
                raise RuntimeError(f"{path}: tensor {spec.name!r} is {dtype} in the engine, the interface says "
                                   f"{spec.dtype}; {rebuild_hint(path.parent.parent)}")
            shape = tuple(self.context.get_tensor_shape(spec.name))  # concrete once the inputs are set
            self.host[spec.name] = np.zeros(shape, dtype)  # staging buffer of one chunk
            self.device[spec.name] = _call(cudart, cudart.cudaMalloc(max(self.host[spec.name].nbytes, 1)))
            self.context.set_tensor_address(spec.name, self.device[spec.name])  # once: buffers never move
        self.use_graph, self.graph_exec = use_graph, None

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        """Run the whole batch in chunks of the engine's batch size (the last chunk padded by repetition)."""
        iface = self.interface
        axes = iface.check_inputs(arrays)  # errors name the tensor
        for spec, array in zip(iface.inputs, arrays):
            if array.shape[1:] != self.shapes[spec.name][1:]:
                raise ValueError(f"{iface.name} input {spec.name!r}: shape {array.shape}, the engine {self.path.name} "
                                 f"was built for {self.shapes[spec.name]}; {rebuild_hint(self.path.parent.parent)}")
        n, b = axes["batch"], self.batch
        out_name = iface.outputs[0].name
        out = np.empty((n, *self.host[out_name].shape[1:]), self.host[out_name].dtype)
        for lo in range(0, n, b):
            rows = min(b, n - lo)
            for spec, array in zip(iface.inputs, arrays):
                chunk = self.host[spec.name]
                chunk[:rows] = array[lo:lo + rows]
                chunk[rows:] = array[lo + rows - 1]  # padding rows: a copy of the last real one
            out[lo:lo + rows] = self._run()[:rows]
        return out

    def _run(self) -> np.ndarray:
        cudart = self.cudart
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for spec in self.interface.inputs:
            host = self.host[spec.name]
            _call(cudart, cudart.cudaMemcpyAsync(self.device[spec.name], host.ctypes.data, host.nbytes, h2d,
                                                 self.stream))
        if self.use_graph and self.graph_exec is None:
            self._capture()
        if self.graph_exec is not None:
            _call(cudart, cudart.cudaGraphLaunch(self.graph_exec, self.stream))
        elif not self.context.execute_async_v3(self.stream):
            raise RuntimeError(f"TensorRT execution of {self.path.name} failed")
        out = self.host[self.interface.outputs[0].name]
        _call(cudart, cudart.cudaMemcpyAsync(out.ctypes.data, self.device[self.interface.outputs[0].name],
                                             out.nbytes, d2h, self.stream))
        _call(cudart, cudart.cudaStreamSynchronize(self.stream))
        return out

    def _capture(self) -> None:
        """Capture one ``execute_async_v3`` in a CUDA graph (shapes are static, so one graph serves every call);
        on failure run without graphs and log why."""
        cudart = self.cudart
        try:
            # A plain run first lets TensorRT finish its lazy setup outside the capture (as NVIDIA advises).
            if not self.context.execute_async_v3(self.stream):
                raise RuntimeError("execute_async_v3 failed")
            _call(cudart, cudart.cudaStreamSynchronize(self.stream))
            mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
            _call(cudart, cudart.cudaStreamBeginCapture(self.stream, mode))
            try:
                self.context.execute_async_v3(self.stream)
            finally:
                graph = _call(cudart, cudart.cudaStreamEndCapture(self.stream))
            self.graph_exec = _call(cudart, cudart.cudaGraphInstantiate(graph, 0))
            cudart.cudaGraphDestroy(graph)  # the executable graph keeps what it needs
            log.debug("%s: captured a CUDA graph", self.path.name)
        except Exception as err:  # noqa: BLE001 - any capture failure means: run without graphs
            log.warning("%s: CUDA graph capture failed (%s); running without CUDA graphs", self.path.name, err)
            self.use_graph, self.graph_exec = False, None

    def free(self) -> None:
        if self.graph_exec is not None:
            self.cudart.cudaGraphExecDestroy(self.graph_exec)
        for pointer in self.device.values():
            self.cudart.cudaFree(pointer)
        self.graph_exec, self.device = None, {}


def current_gpu(cudart, index: int = 0) -> str:
    """Name of CUDA device ``index``, as ``torch.cuda.get_device_name(index)`` gives it (the exporter's sidecar)."""
    props = _call(cudart, cudart.cudaGetDeviceProperties(index))
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return name.split("\x00", 1)[0]


def device_index(device: str | int) -> int:
    """The CUDA device index of ``device``: ``"cuda:N"`` -> N, ``"cuda"`` -> 0, an int as is. ``"cpu"`` (the CLI's
    default device) also means GPU 0: TensorRT runs on a GPU only."""
    if isinstance(device, int):
        if device < 0:
            raise ValueError(f"CUDA device index must be >= 0, got {device}")
        return device
    from diffdef_runtime.backends.ort import parse_device  # no onnxruntime import at module level there

    return parse_device(device)[1]


class TensorRTEngines:
    """``Engines`` on TensorRT engines, on CUDA device ``device`` (``"cuda:N"`` or N; every buffer, stream and
    engine lives there). ``cuda_graph``: replay the denoiser from a CUDA graph."""

    name = "tensorrt"

    def __init__(self, bundle: Bundle, cuda_graph: bool = True, device: str | int = 0):
        trt, cudart = _import()
        self.bundle, self.cudart, self.stream = bundle, cudart, None
        self.device = device_index(device)
        _call(cudart, cudart.cudaSetDevice(self.device))  # before the stream, buffers and deserialisation
        version, gpu = str(trt.__version__), current_gpu(cudart, self.device)
        found = {name: find_engine(bundle, name, version, gpu) for name in _MODELS}  # refuse before allocating
        self.stream = _call(cudart, cudart.cudaStreamCreate())
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engines = {name: _Engine(trt, cudart, runtime, path, sidecar, bundle.interface(name), self.stream,
                                      use_graph=cuda_graph and name == "unet")
                        for name, (path, sidecar) in found.items()}
        log.debug("tensorrt %s on GPU %d (%s): %s", version, self.device, gpu,
                  {n: p.name for n, (p, _) in found.items()})

    def denoise(self, latents, timesteps, condition, condition_mask):
        return self.engines["unet"](latents, timesteps, condition, condition_mask)

    def decode_dvf(self, latents):
        return self.engines["dvf_decoder"](latents)

    def warp(self, image, dvf):
        return self.engines["warp"](image, dvf)

    def close(self) -> None:
        for engine in getattr(self, "engines", {}).values():
            engine.free()
        if self.stream is not None:
            self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass
