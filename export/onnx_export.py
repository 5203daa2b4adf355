"""Export a trained checkpoint's three components to ONNX, following their declared interfaces.

    unet.onnx          ConditionalDenoiser: (latents, timesteps, condition, condition_mask) -> model_output
    dvf_decoder.onnx   DVFDecoder (+ scaling-and-squaring when diffeomorphic, + exact upsampling to a finer
                       output grid): latents -> dvf (voxels of the output grid)
    warp.onnx          trilinear warp, border padding, float32 always: (image, dvf) -> warped

Names, dynamic axes (``batch``; the warp's ``channels`` too) and sample inputs come from
``diffdef_runtime.interfaces.all_interfaces``. The exporter is ``torch.onnx.export(..., dynamo=True,
opset_version=20)``; if it fails, the legacy TorchScript exporter is tried and the reason is logged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from diffdef.generate import load_generation_modules, model_info
from diffdef.models.checkpoint import read_model_json
from diffdef.models.checkpoint import CheckpointError
from diffdef_export.errors import ExportError
from diffdef_export.modules import DVFDecoderForExport, DVFDecoderReference, WarpModule
from diffdef_runtime.grid import Grid, get_grid
from diffdef_runtime.interfaces import ModelInterface, all_interfaces
from diffdef_runtime.pipeline import ModelInfo

log = logging.getLogger(__name__)

OPSET = 20
#: Above this many bytes of weights an ONNX file keeps its weights in ``<file>.data`` (protobuf's 2 GB limit).
EXTERNAL_DATA_BYTES = 1_500_000_000
#: Sizes of the dynamic axes of the sample inputs used for tracing.
TRACE_AXES = {"batch": 2, "channels": 2}

# In-process memo of fp32 exports: (component, weights, grid, opset, torch) -> ONNX bytes. Export is a pure
# function of these, and the torch -> ONNX step is the slow part (tens of seconds even for tiny models), so a
# process exporting the same checkpoint twice (fp32 then fp16, tests) pays once. ``use_cache=False`` disables.
_CACHE: dict[str, tuple[bytes, str]] = {}
_CACHE_MAX_BYTES = 256 * 1024 * 1024


@dataclasses.dataclass
class LoadedCheckpoint:
    """A trained checkpoint folder, loaded for export."""

    directory: Path
    meta: dict
    info: ModelInfo
    denoiser: nn.Module
    decoder: nn.Module
    training_grid: Grid

    @property
    def weights_key(self) -> str:
        """Identifies the weights and configs (sha256 of the two module JSONs, which hold the weights' sha256)."""
        digest = hashlib.sha256()
        for name in ("denoiser.json", "dvf_decoder.json", "model.json"):
            digest.update((self.directory / name).read_bytes())
        return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class OutputGrid:
    """The grid of the exported decoder and warp, and the DVF upsampling factor from the training grid."""

    grid: Grid
    training_grid: Grid
    factor: int


@dataclasses.dataclass(frozen=True)
class Component:
    """One model to export: the module traced to ONNX and the original module it is verified against."""

    interface: ModelInterface
    module: nn.Module
    reference: nn.Module


@dataclasses.dataclass(frozen=True)
class ExportedFile:
    name: str
    path: Path
    seconds: float
    size_bytes: int
    exporter: str  # "dynamo" or "legacy" (of the original export when reused from the in-process cache)


def load_checkpoint(checkpoint_dir: str | Path) -> LoadedCheckpoint:
    """Read and strictly load a DiffDef checkpoint folder; any problem is an ExportError naming it."""
    directory = Path(checkpoint_dir)
    try:
        meta = read_model_json(directory)
        info = model_info(directory)
        denoiser, decoder = load_generation_modules(directory)
        training_grid = get_grid(meta["grid"])
    except (CheckpointError, ValueError, KeyError, OSError) as err:
        raise ExportError(f"cannot load checkpoint {directory}: {err}") from err
    return LoadedCheckpoint(directory, meta, info, denoiser, decoder, training_grid)


def resolve_output_grid(training_grid: str | Grid, grid: str | Grid | None = None) -> OutputGrid:
    """The output grid (default: the training grid); it must be the training grid or an integer refinement."""
    train = get_grid(training_grid)
    out = train if grid is None else get_grid(grid)
    if out.factor > train.factor or train.factor % out.factor:
        raise ExportError(
            f"--grid {out.name} ({out.spacing_mm:g} mm) is not an integer refinement of the training grid "
            f"{train.name} ({train.spacing_mm:g} mm): a model can be exported on its training grid or a finer one "
            f"whose spacing divides it (coarser grids are not supported)")
    factor = train.factor // out.factor
    if tuple(s * factor for s in train.shape) != tuple(out.shape):
        raise ExportError(f"grid {out.name} {out.shape} is not the training grid {train.name} {train.shape} x {factor}")
    return OutputGrid(out, train, factor)


def interfaces_for(checkpoint: LoadedCheckpoint, out: OutputGrid) -> dict[str, ModelInterface]:
    return all_interfaces(checkpoint.info.latent_shape, checkpoint.info.conditions.num_conditions, out.grid.shape)


def components(checkpoint: LoadedCheckpoint, out: OutputGrid) -> dict[str, Component]:
    """The three components of a bundle, in export order."""
    ifs = interfaces_for(checkpoint, out)
    warp = WarpModule().eval()
    return {
        "unet": Component(ifs["unet"], checkpoint.denoiser, checkpoint.denoiser),
        "dvf_decoder": Component(ifs["dvf_decoder"], DVFDecoderForExport(checkpoint.decoder, out.factor).eval(),
                                 DVFDecoderReference(checkpoint.decoder, out.factor).eval()),
        "warp": Component(ifs["warp"], warp, _WarpReference().eval()),
    }


class _WarpReference(nn.Module):
    """``diffdef.geometry.warp_image`` itself (MONAI's ``Warp``)."""

    def forward(self, image, dvf):
        from diffdef.geometry import warp_image

        return warp_image(image, dvf)


def trace_inputs(interface: ModelInterface, seed: int = 0) -> tuple[torch.Tensor, ...]:
    rng = np.random.default_rng(seed)
    axes = {k: v for k, v in TRACE_AXES.items()}
    return tuple(torch.from_numpy(a) for a in interface.sample_inputs(rng, **axes).values())


def _dynamic_shapes(interface: ModelInterface) -> tuple[dict[int, torch.export.Dim] | None, ...]:
    dims: dict[str, torch.export.Dim] = {}
    shapes = []
    for spec in interface.inputs:
        axes = {i: dims.setdefault(s, torch.export.Dim(s, min=1))
                for i, s in enumerate(spec.shape) if isinstance(s, str)}
        shapes.append(axes or None)
    return tuple(shapes)


def _weights_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def export_module(module: nn.Module, interface: ModelInterface, path: str | Path) -> str:
    """Trace ``module`` to ``path`` per ``interface``; returns the exporter used (``dynamo`` or ``legacy``).

    Large models (weights over ``EXTERNAL_DATA_BYTES``) write their weights to ``<path>.data`` beside it.
    """
    path = Path(path)
    args = trace_inputs(interface)
    names_in = [s.name for s in interface.inputs]
    names_out = [s.name for s in interface.outputs]
    external = _weights_bytes(module) > EXTERNAL_DATA_BYTES
    module.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # Harmless notes of the exporter about our own usage: one "batch" axis shared by several inputs, and a
            # deprecation inside torch.export's pytree code.
            warnings.filterwarnings("ignore", message=".*axis name.*will not be used", category=UserWarning)
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            program = torch.onnx.export(module, args, None, input_names=names_in, output_names=names_out,
                                        dynamic_shapes=_dynamic_shapes(interface), dynamo=True,
                                        opset_version=OPSET, verbose=False)
        program.save(str(path), external_data=external)
        return "dynamo"
    except Exception as err:  # the dynamo exporter raises many types; the legacy one is our fallback
        log.warning("%s: dynamo ONNX export failed (%s: %s); trying the legacy TorchScript exporter",
                    interface.name, type(err).__name__, str(err).splitlines()[0] if str(err) else "")
        dynamo_error = err
    try:
        with torch.no_grad():
            torch.onnx.export(module, args, str(path), input_names=names_in, output_names=names_out,
                              dynamic_axes=interface.dynamic_axes, dynamo=False, opset_version=OPSET)
    except Exception as err:
        raise ExportError(f"{interface.name}: ONNX export failed with both exporters: dynamo: "
                          f"{type(dynamo_error).__name__}: {dynamo_error}; "
                          f"legacy: {type(err).__name__}: {err}") from err
    return "legacy"


def export_component(name: str, component: Component, out_dir: str | Path, *, cache_key: str | None = None
                     ) -> ExportedFile:
    """Export one component as ``out_dir/<interface.file>`` (fp32)."""
    path = Path(out_dir) / component.interface.file
    tic = time.perf_counter()
    if cache_key is not None and cache_key in _CACHE:
        blob, exporter = _CACHE[cache_key]
        path.write_bytes(blob)
    else:
        exporter = export_module(component.module, component.interface, path)
        data = Path(f"{path}.data")
        if cache_key is not None and not data.exists() and path.stat().st_size <= _CACHE_MAX_BYTES:
            while _CACHE and sum(len(b) for b, _ in _CACHE.values()) + path.stat().st_size > _CACHE_MAX_BYTES:
                _CACHE.pop(next(iter(_CACHE)))
            _CACHE[cache_key] = (path.read_bytes(), exporter)
    size = path.stat().st_size + (Path(f"{path}.data").stat().st_size if Path(f"{path}.data").exists() else 0)
    return ExportedFile(name, path, time.perf_counter() - tic, size, exporter)


def cache_key(name: str, weights_key: str, out: OutputGrid) -> str:
    """Key of the in-process export memo: what the traced graph depends on."""
    blob = json.dumps([name, weights_key, out.grid.name, out.factor, OPSET, torch.__version__])
    return hashlib.sha256(blob.encode()).hexdigest()


def export_onnx(checkpoint: LoadedCheckpoint, out_dir: str | Path, out: OutputGrid, *, use_cache: bool = True
                ) -> dict[str, ExportedFile]:
    """Export the three components (fp32) into ``out_dir``; returns name -> ExportedFile."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, component in components(checkpoint, out).items():
        key = cache_key(name, checkpoint.weights_key if name != "warp" else "", out) if use_cache else None
        results[name] = export_component(name, component, out_dir, cache_key=key)
        log.info("%s: exported in %.1f s (%s)", name, results[name].seconds, results[name].exporter)
    return results
