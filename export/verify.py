"""Checks of every exported file: ``onnx.checker``, parity with PyTorch in ONNX Runtime (CPU), op inventory.

Parity: the ONNX file runs in ONNX Runtime's CPU provider and the original PyTorch module in float32 on the same
fresh random inputs (the interface's ``sample_inputs``, batch 2, seed ``PARITY_SEED``, not the tracing seed).
Reported: ``max_abs = max|onnx - torch|`` and the relative error ``max_rel = max|onnx - torch| / max|torch|``
(relative to the largest reference value, so that near-zero outputs do not blow it up). Above the tolerance the
export fails with a VerificationError naming the component, the error and the tolerance.

Tolerances (relative): fp32 ``1e-4`` (measured: 1e-7 to 3e-6). fp16 ``1e-2``, measured on the random test
models (``diffdef_export.testing``, DVFs of about one voxel, maxima ~7 voxels): UNet 1.3-1.5e-3, DVF decoder
2.3e-3 (max abs 0.017 voxel), diffeomorphic DVF decoder (7 squarings of a random, rough velocity field, which
amplifies the fp16 error of the velocity) 5-7e-3. ONNX Runtime's CPU provider runs the fp16 graph with fp16
tensors between nodes (weights and activations rounded to fp16) but computes some ops in fp32 internally where
it lacks fp16 kernels, so a GPU engine may differ somewhat more (not measured: no GPU was available here).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from diffdef_export.errors import VerificationError
from diffdef_export.trt_supported_ops import has_5d_gridsample, op_counts, unsupported_ops
from diffdef_runtime.interfaces import ModelInterface

log = logging.getLogger(__name__)

TOLERANCES = {"fp32": 1e-4, "fp16": 1e-2}
#: Tolerance (relative) between ``warp_gather.onnx`` and ``warp.onnx``, both in ONNX Runtime. GridSample's
#: normalised coordinates lose about size * 2**-24 voxel, so on random-noise images (the worst case) the two
#: differ by 3e-6 on the 4mm grid (tested to 1e-5 in tests/test_export_warp_gather.py) and 1.5e-5 on the paper
#: grid: the export checks the fp32 tolerance.
GATHER_TOLERANCE = 1e-4
PARITY_SEED = 20_240_601
PARITY_AXES = {"batch": 2, "channels": 2}


@dataclasses.dataclass(frozen=True)
class Parity:
    component: str
    max_abs: float
    max_rel: float
    tolerance: float
    reference: str

    def to_dict(self) -> dict:
        return {"max_abs": self.max_abs, "max_rel": self.max_rel, "tolerance": self.tolerance,
                "reference": self.reference, "relative_to": "max|reference|", "batch": PARITY_AXES["batch"]}


@dataclasses.dataclass(frozen=True)
class Inventory:
    counts: dict[str, int]
    tensorrt_unsupported: list[str]
    gridsample_5d: bool


def check_model(path: str | Path) -> None:
    """``onnx.checker.check_model`` (by path, so external weights and > 2 GB models work)."""
    try:
        onnx.checker.check_model(str(path), full_check=False)
    except onnx.checker.ValidationError as err:
        raise VerificationError(f"{Path(path).name}: onnx.checker failed: {err}") from err


def session(path: str | Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def relative_error(actual: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    """``(max|a - b|, max|a - b| / max|b|)``; the relative error is 0 for two all-zero arrays."""
    diff = float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64))))
    scale = float(np.max(np.abs(expected)))
    return diff, (diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf")))


def parity(name: str, path: str | Path, reference: nn.Module, interface: ModelInterface, tolerance: float,
           *, seed: int = PARITY_SEED, reference_name: str = "torch") -> Parity:
    """Run ``path`` in ONNX Runtime and ``reference`` in PyTorch on the same random inputs; raise above tolerance."""
    inputs = interface.sample_inputs(np.random.default_rng(seed), **PARITY_AXES)
    outputs = session(path).run([s.name for s in interface.outputs], inputs)
    with torch.no_grad():
        expected = reference(*(torch.from_numpy(inputs[s.name]) for s in interface.inputs))
    expected = expected.float().cpu().numpy()
    if outputs[0].shape != expected.shape:
        raise VerificationError(f"{name}: ONNX output shape {outputs[0].shape} != PyTorch {expected.shape}")
    max_abs, max_rel = relative_error(outputs[0], expected)
    result = Parity(name, max_abs, max_rel, tolerance, reference_name)
    if not max_rel <= tolerance:
        raise VerificationError(f"{name}: ONNX Runtime output differs from PyTorch: max relative error {max_rel:.3g} "
                                f"(max abs {max_abs:.3g}) exceeds the tolerance {tolerance:g} ({Path(path).name})")
    return result


def onnx_parity(name: str, path: str | Path, reference_path: str | Path, interface: ModelInterface,
                tolerance: float, *, seed: int = PARITY_SEED) -> Parity:
    """Two ONNX files with one interface, both in ONNX Runtime (e.g. ``warp_gather.onnx`` vs ``warp.onnx``)."""
    inputs = interface.sample_inputs(np.random.default_rng(seed), **PARITY_AXES)
    names = [s.name for s in interface.outputs]
    actual = session(path).run(names, inputs)[0]
    expected = session(reference_path).run(names, inputs)[0]
    max_abs, max_rel = relative_error(actual, expected)
    result = Parity(name, max_abs, max_rel, tolerance, Path(reference_path).name)
    if not max_rel <= tolerance:
        raise VerificationError(f"{name}: {Path(path).name} differs from {Path(reference_path).name}: max relative "
                                f"error {max_rel:.3g} (max abs {max_abs:.3g}) exceeds the tolerance {tolerance:g}")
    return result


def inventory(path: str | Path) -> Inventory:
    """Op-type counts of a file and the ops TensorRT's ONNX parser cannot import (5-D GridSample: < 11.2)."""
    model = onnx.load(str(path), load_external_data=False)
    counts = op_counts(model)
    g5 = "GridSample" in counts and has_5d_gridsample(model)
    return Inventory(counts, unsupported_ops(counts, gridsample_5d=g5), g5)
