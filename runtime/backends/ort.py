"""The ONNX Runtime backend: the bundle's three ONNX files, one ``InferenceSession`` each, driven through I/O
binding so that output buffers are allocated once per (model, batch size) and reused at every step.

CPU (default): inputs are bound as numpy arrays (no copy) and outputs are written straight into
pre-allocated numpy buffers. CUDA (``device="cuda"``/``"cuda:1"``; needs ``onnxruntime-gpu``): inputs and
outputs live in pre-allocated device OrtValues; each call copies the (small) inputs in place and the output
back, so the session never allocates per step. TensorRT's execution provider is put first when onnxruntime
offers it; its sessions then load the Gather twins (``warp_gather.onnx``, ``dvf_decoder_gather.onnx`` where
the bundle has them) so that TensorRT never parses a GridSample (``diffdef_export.tensorrt_build`` says why).
On the CPU alone the UNet runs from ``unet_conv2d.onnx`` and the decoder from ``dvf_decoder_gather.onnx``,
both faster there (``CPU_TWINS``).
The CUDA provider runs 5-D GridSample from onnxruntime-gpu 1.25 (the ``gpu`` extra's minimum).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from diffdef_runtime.bundle import Bundle, BundleError
from diffdef_runtime.interfaces import ModelInterface

log = logging.getLogger(__name__)

_MODELS = ("unet", "dvf_decoder", "warp")
_TRT_PRECISIONS = ("fp32", "fp16", "float32", "float16")


def _import_ort():
    try:
        import onnxruntime
    except ImportError as err:  # pragma: no cover - the runtime or gpu extra provides it
        raise RuntimeError('the ort backend needs ONNX Runtime: pip install "diffdef[runtime]" (CPU) or '
                           f'"diffdef[gpu]" (CUDA), not both: {err}') from err
    return onnxruntime


def parse_device(device: str) -> tuple[str, int]:
    """``"cpu"`` -> ("cpu", 0); ``"cuda"`` -> ("cuda", 0); ``"cuda:1"`` -> ("cuda", 1)."""
    text = str(device).strip().lower()
    kind, _, index = text.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise ValueError(f"device {device!r}: use 'cpu', 'cuda' or 'cuda:N'")
    return kind, int(index or 0)


def select_providers(bundle: Bundle, device: str = "cpu", available: Sequence[str] | None = None) -> list:
    """Execution providers for ``device``, best first (entries are names or ``(name, options)`` pairs).

    Raises RuntimeError when CUDA is asked for but this onnxruntime build has no CUDA provider.
    """
    kind, index = parse_device(device)
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    if available is None:
        available = _import_ort().get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise RuntimeError(
            f"device {device!r} needs onnxruntime-gpu (pip install onnxruntime-gpu); this onnxruntime offers only "
            f"{list(available)}. Use --device cpu, or --backend tensorrt with TensorRT engines.")
    providers: list = []
    precision = str(bundle.manifest.get("precision", "fp32")).lower()
    if "TensorrtExecutionProvider" in available and precision in _TRT_PRECISIONS:
        providers.append(("TensorrtExecutionProvider", {
            "device_id": index,
            # The precision is baked into the ONNX (fp16 with fp32 islands); TensorRT's fp16 flag would also
            # demote the islands (norms, warp), so it stays off for both fp32 and fp16 bundles.
            "trt_fp16_enable": False,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(bundle.root / "engines" / "ort_trt_cache"),
        }))
    elif "TensorrtExecutionProvider" in available:
        log.info("bundle precision %r: not using the TensorRT execution provider", precision)
    providers.append(("CUDAExecutionProvider", {"device_id": index}))
    providers.append("CPUExecutionProvider")
    return providers


class _BoundModel:
    """One session + its I/O binding + output buffers cached per dynamic-axis sizes (batch, channels)."""

    def __init__(self, ort, session, interface: ModelInterface, device: tuple[str, int]):
        self.ort, self.session, self.interface = ort, session, interface
        self.kind, self.device_id = device
        self.binding = session.io_binding()
        self._outputs: dict[tuple, list] = {}  # axes key -> [(numpy host buffer, OrtValue)] per output
        self._inputs: dict[tuple, list] = {}   # CUDA only: axes key -> [device OrtValue] per input
        self._check_session()

    def _check_session(self) -> None:
        iface = self.interface
        got_in = [i.name for i in self.session.get_inputs()]
        got_out = [o.name for o in self.session.get_outputs()]
        want_in = [s.name for s in iface.inputs]
        want_out = [s.name for s in iface.outputs]
        if sorted(got_in) != sorted(want_in) or sorted(got_out) != sorted(want_out):
            raise BundleError(f"{iface.file}: the ONNX graph has inputs {got_in} and outputs {got_out}, but the "
                              f"manifest declares {want_in} -> {want_out}; re-export the bundle")

    def _output_buffers(self, key: tuple, axes: dict[str, int]) -> list:
        buffers = self._outputs.get(key)
        if buffers is None:
            buffers = []
            for spec in self.interface.outputs:
                host = np.empty(spec.concrete(**axes), dtype=spec.dtype)
                if self.kind == "cpu":
                    value = self.ort.OrtValue.ortvalue_from_numpy(host)  # wraps host memory, no copy
                else:
                    value = self.ort.OrtValue.ortvalue_from_shape_and_type(host.shape, host.dtype, "cuda",
                                                                           self.device_id)
                buffers.append((host, value))
            self._outputs[key] = buffers
            log.debug("%s: allocated output buffers for %s", self.interface.name, axes)
        return buffers

    def __call__(self, *arrays: np.ndarray) -> list[np.ndarray]:
        """Run the model; returns the output host buffers (overwritten by the next call with the same sizes)."""
        axes = self.interface.check_inputs(arrays)  # errors name the tensor
        key = tuple(sorted(axes.items()))
        outputs = self._output_buffers(key, axes)
        binding = self.binding
        binding.clear_binding_inputs()
        if self.kind == "cpu":
            keep = [np.ascontiguousarray(a) for a in arrays]  # alive until the run returns
            for spec, array in zip(self.interface.inputs, keep):
                binding.bind_cpu_input(spec.name, array)
        else:
            values = self._inputs.get(key)
            if values is None:
                values = [self.ort.OrtValue.ortvalue_from_shape_and_type(a.shape, a.dtype, "cuda", self.device_id)
                          for a in arrays]
                self._inputs[key] = values
            for spec, array, value in zip(self.interface.inputs, arrays, values):
                value.update_inplace(np.ascontiguousarray(array))  # host -> existing device buffer
                binding.bind_ortvalue_input(spec.name, value)
        binding.clear_binding_outputs()
        for spec, (_, value) in zip(self.interface.outputs, outputs):
            binding.bind_ortvalue_output(spec.name, value)
        self.session.run_with_iobinding(binding)
        if self.kind != "cpu":
            for host, value in outputs:
                host[...] = value.numpy()  # device -> host
        return [host for host, _ in outputs]


#: The twin ONNX Runtime's CPU provider runs instead of a component, where the bundle has it (same interface,
#: verified against the same PyTorch reference), with the time measured on the 2 mm default (2-core CPU,
#: benchmarks/latency.py): the UNet with 2-D convolutions over depth slices (``unet_conv2d.onnx``, 6.0-7.7
#: against 9.5-11.8 ms a step; ``diffdef_export.unet_conv2d`` says why) and the decoder integrated with Gather
#: arithmetic (``dvf_decoder_gather.onnx``, 27-37 against 60 ms for GridSample's seven scaling-and-squaring
#: warps). The warp keeps GridSample: for one full-grid warp it was as fast (30 against 34 ms).
CPU_TWINS = {"unet": "unet_conv2d", "dvf_decoder": "dvf_decoder_gather"}


def session_file(bundle: Bundle, name: str, providers: Sequence) -> Path:
    """The ONNX file of component ``name`` for a session on ``providers``: with the TensorRT provider among them,
    its Gather twin (``<name>_gather``, no 5-D GridSample for TensorRT); on the CPU provider alone, its
    ``CPU_TWINS`` twin; else (or where the bundle lacks the twin) its own file."""
    names = [p[0] if isinstance(p, (tuple, list)) else p for p in providers]
    if "TensorrtExecutionProvider" in names:
        twin = f"{name}_gather"
    elif set(names) == {"CPUExecutionProvider"}:
        twin = CPU_TWINS.get(name)
    else:
        twin = None
    if twin is not None and twin in bundle.manifest.get("interfaces", {}):
        return Path(bundle.root) / bundle.interface(twin).file
    return Path(bundle.root) / bundle.interface(name).file


def session_options(ort, name: str):
    """Options of the session of component ``name``. Each session has its own intra-op threads, which spin after
    a run waiting for the next one: that suits the UNet, run once per step, but the decoder's and the warp's
    threads, run once per atlas, would spin while the next component runs and take its cores (on 2 cores the
    2 mm warp took 60 ms after the decoder instead of 34 ms alone; benchmarks/latency.py)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if name != "unet":
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OrtEngines:
    """``Engines`` on ONNX Runtime. ``providers`` overrides the choice made from ``device``."""

    name = "ort"

    def __init__(self, bundle: Bundle, device: str = "cpu", providers: Sequence | None = None):
        ort = _import_ort()
        self.bundle, self.device = bundle, device
        kind, index = parse_device(device)
        self.providers = list(providers) if providers is not None else select_providers(bundle, device)
        self.models: dict[str, _BoundModel] = {}
        for name in _MODELS:
            interface = bundle.interface(name)
            path = session_file(bundle, name, self.providers)
            try:
                session = ort.InferenceSession(str(path), sess_options=session_options(ort, name),
                                               providers=self.providers)
            except Exception as err:  # onnxruntime raises its own exception types
                raise RuntimeError(f"onnxruntime could not load {path}: {err}") from err
            self.models[name] = _BoundModel(ort, session, interface, (kind, index))
        log.debug("ort engines on %s, providers %s", device, self.models["unet"].session.get_providers())

    @property
    def active_providers(self) -> dict[str, list[str]]:
        """The providers each session actually got (onnxruntime drops unavailable ones)."""
        return {name: model.session.get_providers() for name, model in self.models.items()}

    def denoise(self, latents, timesteps, condition, condition_mask):
        # The returned buffer is reused by the next call of this batch size; the loop consumes it at once.
        return self.models["unet"](latents, timesteps, condition, condition_mask)[0]

    def decode_dvf(self, latents):
        return self.models["dvf_decoder"](latents)[0].copy()

    def warp(self, image, dvf):
        return self.models["warp"](image, dvf)[0].copy()
