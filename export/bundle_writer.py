"""Write a bundle (the layout of ``diffdef_runtime.bundle``) from a trained checkpoint folder.

Everything is written into a hidden staging folder beside the target (``.<name>.partial-<pid>-*``) and renamed
into place only when complete and verified, with ``manifest.json`` (checksums of every file) and
``checksums.sha256`` (which covers manifest.json too) written last, inside staging. A failed or interrupted export
therefore never leaves a bundle that ``Bundle.open`` accepts at the target path. A killed export's staging (or
``.old-`` folder) is removed by the next export into the same place: its name holds the writer's process id,
and a folder whose writer is no longer running on this machine is stale.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from diffdef_export import fp16 as fp16_mod
from diffdef_export import verify
from diffdef_export.errors import ExportError
from diffdef_export.onnx_export import (
    EXTERNAL_DATA_BYTES, Component, LoadedCheckpoint, OutputGrid, cache_key, components, export_component,
    export_onnx, load_checkpoint, resolve_output_grid,
)
from diffdef_export.modules import DVFDecoderForExport
from diffdef_export.unet_conv2d import unet_for_cpu
from diffdef_export.warp_gather import GatherWarpModule, gather_warp
from diffdef_runtime import atomic
from diffdef_runtime.bundle import CHECKSUMS, TEMPLATE_FILES, Bundle, format_checksums, sha256_file
from diffdef_runtime.interfaces import FORMAT_VERSION, ModelInterface
from diffdef_runtime.nifti import save_nifti
from diffdef_runtime.pipeline import recorded_default_steps

log = logging.getLogger(__name__)

CHECKPOINT_FILES = ("denoiser.safetensors", "denoiser.json", "dvf_decoder.safetensors", "dvf_decoder.json",
                    "model.json")
FP16_COMPONENTS = ("unet", "dvf_decoder", "dvf_decoder_gather")  # the warp stays float32 always
#: The Gather-based twins (no GridSample, for TensorRT) and the component whose interface and reference they share.
GATHER_TWINS = {"warp_gather": "warp", "dvf_decoder_gather": "dvf_decoder"}
#: Every twin and its component: the Gather ones and the UNet for ONNX Runtime's CPU provider (``unet_conv2d``).
TWINS = {**GATHER_TWINS, "unet_conv2d": "unet"}


@dataclasses.dataclass
class ComponentReport:
    """What the CLI prints per component."""

    name: str
    file: str
    seconds: float
    size_bytes: int
    max_abs: float
    max_rel: float
    tolerance: float
    unsupported: list[str]


@dataclasses.dataclass
class ExportReport:
    bundle: Path
    precision: str
    grid: str
    components: list[ComponentReport]
    seconds: float
    engines: dict = dataclasses.field(default_factory=dict)


def _versions() -> dict[str, str]:
    import monai
    import onnxruntime
    import onnxscript
    import torch

    from importlib.metadata import PackageNotFoundError, version

    try:
        diffdef_version = version("diffdef")
    except PackageNotFoundError:
        diffdef_version = "unknown"
    return {"torch": torch.__version__, "monai": monai.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "onnxscript": onnxscript.__version__, "diffdef": diffdef_version,
            "python": platform.python_version()}


def _write_templates(staging: Path, out: OutputGrid) -> None:
    from diffdef.template import load_template

    template = load_template(out.grid.name)
    affine = out.grid.affine
    maps = {"t1": np.asarray(template.t1, np.float32),
            "ventricle_prob": np.asarray(template.ventricle_prob, np.float32),
            "labels": np.asarray(template.labels, np.uint8)}
    for key, array in maps.items():
        if array.shape != tuple(out.grid.shape):
            raise ExportError(f"template {key} has shape {array.shape}, grid {out.grid.name} is {out.grid.shape}")
        save_nifti(array, affine, staging / TEMPLATE_FILES[key])


def _files_table(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` except manifest.json, checksums.sha256 and engines/ (relative POSIX
    paths)."""
    table = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and rel not in ("manifest.json", CHECKSUMS) and not rel.startswith("engines/"):
            table[rel] = sha256_file(path)
    return table


def _prepare_target(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"output path {out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise ExportError(f"output folder {out_dir} exists and is not empty; choose another folder or pass --force "
                          "to replace it")


def _save_onnx(model: onnx.ModelProto, path: Path) -> None:
    """Save, with the weights in ``<file>.data`` when they would not fit one protobuf (2 GB)."""
    weights = sum(i.ByteSize() for i in model.graph.initializer)
    external = weights > EXTERNAL_DATA_BYTES
    onnx.save(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
              location=f"{path.name}.data" if external else None)


def _set_permissions(root: Path) -> None:
    """mkdtemp/mkstemp create 0700/0600 entries; give the bundle ordinary permissions (per the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [root, *root.rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_staging(out_dir: Path) -> list[Path]:
    """Delete ``.<name>.partial-<pid>-*`` / ``.<name>.old-<pid>-*`` folders beside ``out_dir`` whose exporting
    process is gone (killed mid-export); folders of a running export are kept. Returns what was removed."""
    removed = []
    if not out_dir.parent.is_dir():
        return removed
    for kind in ("partial", "old"):
        for path in out_dir.parent.glob(f".{out_dir.name}.{kind}-*"):
            pid = path.name[len(f".{out_dir.name}.{kind}-"):].split("-")[0]
            if path.is_dir() and pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    if removed:
        log.info("removed %d stale folder(s) of a killed export: %s", len(removed), ", ".join(p.name for p in removed))
    return removed


def _install(staging: Path, out_dir: Path) -> None:
    """Move the finished staging folder to ``out_dir`` (replacing a previous folder there)."""
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}-{time.time_ns()}"
        os.replace(out_dir, old)
    try:
        os.replace(staging, out_dir)
    except BaseException:
        if old is not None:
            os.replace(old, out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_bundle(checkpoint_dir: str | Path, out_dir: str | Path, fp16: bool = False, tensorrt: bool = False,
                  grid: str | None = None, tensorrt_batch: int = 1, *, force: bool = False,
                  use_cache: bool = True, report: list | None = None) -> Path:
    """Export ``checkpoint_dir`` (a ``diffdef-train`` folder) as a verified bundle in ``out_dir``.

    Args:
        fp16: mixed precision UNet and DVF decoder (fp16 inside, fp32 I/O and islands); the warp stays fp32.
        tensorrt: also build TensorRT engines into ``out_dir/engines`` (needs TensorRT and a CUDA GPU; checked
            first, before any export work).
        grid: output grid of the decoder, warp and template (default: the training grid; finer grids upsample
            the DVF exactly).
        tensorrt_batch: static batch size of the engines.
        force: replace a non-empty ``out_dir``.
        use_cache: reuse fp32 ONNX exports made earlier in this process (``onnx_export``).
        report: if a list is given, an ``ExportReport`` is appended to it (the CLI prints it).
    Returns:
        ``out_dir`` as a Path.
    Raises:
        ExportError (VerificationError, TensorRTUnavailableError): ``out_dir`` is then left as it was (no
        partial bundle; with ``force``, a previous bundle there is replaced only by a complete, verified one).
        Engines are built after the bundle is in place: if that fails the bundle stays (engines are a cache).
    """
    tic = time.perf_counter()
    out_dir = Path(out_dir).absolute()
    precision = "fp16" if fp16 else "fp32"
    if tensorrt:
        from diffdef_export.tensorrt_build import require_tensorrt

        if tensorrt_batch < 1:
            raise ExportError(f"--tensorrt-batch must be >= 1, got {tensorrt_batch}")
        require_tensorrt()  # fail before spending minutes on the export
    _prepare_target(out_dir, force)
    checkpoint = load_checkpoint(checkpoint_dir)
    out = resolve_output_grid(checkpoint.training_grid, grid)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-{os.getpid()}-", dir=out_dir.parent))
    try:
        manifest, reports = _write_bundle(checkpoint, out, staging, fp16=fp16, use_cache=use_cache)
        manifest["files"] = _files_table(staging)
        atomic.write_json(staging / "manifest.json", manifest)
        checksums = {**manifest["files"], "manifest.json": sha256_file(staging / "manifest.json")}
        atomic.write_text(staging / CHECKSUMS, format_checksums(checksums))
        _set_permissions(staging)
        Bundle.open(staging)  # the runtime accepts what we wrote (checksums included)
        _prepare_target(out_dir, force)
        _install(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    engines = {}
    if tensorrt:
        from diffdef_export.tensorrt_build import build_engines

        engines = build_engines(out_dir, batch=tensorrt_batch)
    if report is not None:
        report.append(ExportReport(out_dir, precision, out.grid.name, reports, time.perf_counter() - tic, engines))
    return out_dir


def _write_bundle(checkpoint: LoadedCheckpoint, out: OutputGrid, staging: Path, *, fp16: bool, use_cache: bool
                  ) -> tuple[dict, list[ComponentReport]]:
    precision = "fp16" if fp16 else "fp32"
    exported = export_onnx(checkpoint, staging, out, use_cache=use_cache)
    comps = components(checkpoint, out)
    interfaces: dict[str, ModelInterface] = {name: c.interface for name, c in comps.items()}
    seconds = {name: e.seconds for name, e in exported.items()}
    exporters = {name: e.exporter for name, e in exported.items()}

    def export_twin(name: str, module, weights_key: str) -> None:
        """Export ``module`` as ``<name>.onnx``, twin of component ``TWINS[name]``: its interface and reference."""
        base = TWINS[name]
        interface = dataclasses.replace(interfaces[base], name=name, file=f"{name}.onnx")
        key = cache_key(name, weights_key, out) if use_cache else None
        done = export_component(name, Component(interface, module, comps[base].reference), staging, cache_key=key)
        seconds[name], interfaces[name], exporters[name] = done.seconds, interface, done.exporter

    # The Gather warp (no GridSample) for TensorRT < 11.2.
    export_twin("warp_gather", GatherWarpModule().eval(), "")
    # The UNet with 2-D convolutions over depth slices, for ONNX Runtime's CPU provider (faster there). fp32
    # bundles only: fp16 bundles are for GPUs, and ONNX Runtime's x86 CPU provider has no fp16 convolution.
    if not fp16:
        export_twin("unet_conv2d", unet_for_cpu(checkpoint.denoiser), checkpoint.weights_key)
    # A diffeomorphic decoder integrates with 5-D GridSample: its twin integrates with the Gather warp, so that
    # TensorRT (any version, and whatever it makes of GridSample's "linear" spelling) never parses a GridSample.
    diffeomorphic = bool(checkpoint.decoder.config.diffeomorphic)
    if diffeomorphic:
        decoder = DVFDecoderForExport(checkpoint.decoder, out.factor, warp=gather_warp).eval()
        export_twin("dvf_decoder_gather", decoder, checkpoint.weights_key)

    if fp16:
        for name in (n for n in FP16_COMPONENTS if n in interfaces):
            t0 = time.perf_counter()
            path = staging / interfaces[name].file
            model = onnx.load(str(path))
            converted = fp16_mod.convert_to_fp16(model)
            for stale in (path, Path(f"{path}.data")):
                stale.unlink(missing_ok=True)
            _save_onnx(converted, path)
            seconds[name] += time.perf_counter() - t0

    # Verification: checker, parity with PyTorch, operator inventory.
    verification, operators, unsupported, requirements, reports = {}, {}, {}, {}, []
    for name, interface in interfaces.items():
        path = staging / interface.file
        verify.check_model(path)
        tol = verify.TOLERANCES[precision if name in FP16_COMPONENTS else "fp32"]
        reference = comps[TWINS.get(name, name)].reference
        result = verify.parity(name, path, reference, interface, tol)
        verification[name] = result.to_dict()
        inv = verify.inventory(path)
        operators[interface.file] = inv.counts
        unsupported[interface.file] = inv.tensorrt_unsupported
        if inv.gridsample_5d:
            twin = next((t for t, base in GATHER_TWINS.items() if base == name and t in interfaces), None)
            requirements[interface.file] = {"tensorrt_min_version": "11.2", "reason": "5-D GridSample",
                                            "alternative": interfaces[twin].file if twin else None}
        size = path.stat().st_size + (Path(f"{path}.data").stat().st_size if Path(f"{path}.data").exists() else 0)
        reports.append(ComponentReport(name, interface.file, seconds[name], size, result.max_abs, result.max_rel,
                                       tol, inv.tensorrt_unsupported))
        log.info("%s: max abs %.3g, max rel %.3g (tolerance %g)", name, result.max_abs, result.max_rel, tol)
    gather_parity = verify.onnx_parity("warp_gather_vs_warp", staging / "warp_gather.onnx", staging / "warp.onnx",
                                interfaces["warp"], verify.GATHER_TOLERANCE)
    verification["warp_gather_vs_warp"] = gather_parity.to_dict()

    _write_templates(staging, out)
    (staging / "checkpoint").mkdir()
    for name in CHECKPOINT_FILES:
        src = checkpoint.directory / name
        if not src.is_file():
            raise ExportError(f"checkpoint file missing: {src}")
        shutil.copy2(src, staging / "checkpoint" / name)

    meta, info = checkpoint.meta, checkpoint.info
    grid = out.grid
    manifest = {
        "format_version": FORMAT_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "precision": precision,
        "grid": {"name": grid.name, "shape": list(grid.shape), "spacing_mm": grid.spacing_mm,
                 "affine": np.asarray(grid.affine).tolist()},
        "training_grid": out.training_grid.name,
        "dvf_upsample_factor": out.factor,
        "latent_shape": list(info.latent_shape),
        "latent_scale": float(info.latent_scale),
        "schedule": info.schedule.to_dict(),
        "conditions": info.conditions.to_dict(),
        "sample_steps": int(meta.get("sample_steps", 20)),
        "default_steps": recorded_default_steps(meta),
        "preset": meta.get("preset"),
        "diffeomorphic": diffeomorphic,
        "interfaces": {name: i.to_dict() for name, i in interfaces.items()},
        "operators": operators,
        "tensorrt_unsupported": unsupported,
        "tensorrt_requirements": requirements,
        "fp16_fp32_ops": sorted(fp16_mod.FP32_OPS) if fp16 else [],
        "verification": verification,
        "exporters": exporters,
        "versions": _versions(),
    }
    return manifest, reports
