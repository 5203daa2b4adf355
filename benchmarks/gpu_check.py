"""Every GPU path whose libraries are present, each against the CPU reference, in one table (under 5 minutes).

    python benchmarks/gpu_check.py                                   # tiny untrained diffeomorphic model, 4 mm
    python benchmarks/gpu_check.py --checkpoint runs/default --bundle runs/default/bundle

Why: none of these paths can run on the CPU machines the code is written on, so one script says on a GPU
machine which of them work and how close they come to the reference. The reference is the PyTorch modules in
float32 on the CPU (``diffdef.generate.TorchEngines``), generating the same ages with the same seed and steps.
Rows (a path whose library or device is missing is skipped, and the reason is printed):

    torch-cpu          the reference itself (latency only)
    ort-cpu            the bundle on ONNX Runtime's CPU provider (checks the comparison; no GPU needed)
    torch-cuda         the PyTorch modules on CUDA (TF32 off: an fp32 comparison)
    train-amp-compile  one training step of the denoiser, torch.compile + bf16 autocast (as ``diffdef-train`` with
                       run.compile and run.mixed_precision), its output against the CPU fp32 forward
    ort-cuda           the bundle on ONNX Runtime's CUDA provider (5-D GridSample needs onnxruntime-gpu >= 1.25)
    ort-tensorrt-ep    ONNX Runtime's TensorRT provider (it loads the Gather twins)
    trt-build          native TensorRT engines built from the bundle (``build_engines``)
    trt-engine-cache   the same call again: every engine must come from the cache
    trt-run            ``--backend tensorrt`` generation
    trt-cuda-graph     the same generation again (the denoiser replays its CUDA graph): equal to trt-run

Errors: ``dvf`` is max |DVF - reference| in voxels, ``atlas`` is max |warped template - reference| (intensity in
[0, 1]); the training row reports the relative error of the denoiser output in the ``dvf`` column.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
import time
import traceback
from pathlib import Path

import click
import numpy as np

#: Pass bounds against the fp32 CPU reference after the whole sampling loop (fp32 bundles and engines).
TOL_DVF_VOXELS = 1e-2
TOL_ATLAS = 1e-2
#: Relative bound of the bf16-autocast denoiser output (bf16 keeps 8 bits of mantissa).
TOL_AMP_REL = 5e-2


class Row:
    """One line of the table. ``status``: pass, fail, skip or ref; errors in voxels / intensity; seconds.
    (A plain class: the tests load this script without registering it as a module, which dataclasses need.)"""

    def __init__(self, path: str, status: str, dvf_err: float | None = None, atlas_err: float | None = None,
                 seconds: float | None = None, note: str = ""):
        self.path, self.status, self.dvf_err, self.atlas_err = path, status, dvf_err, atlas_err
        self.seconds, self.note = seconds, note


class Check:
    """Shared state: the model, the reference results and the settings of one run."""

    def __init__(self, checkpoint: Path, bundle: Path | None, ages: list[float], steps: int, work: Path):
        from diffdef.generate import model_info, read_model_json, template_maps

        self.checkpoint, self.bundle, self.ages, self.steps, self.work = checkpoint, bundle, ages, steps, work
        self.info = model_info(checkpoint)
        self.template = template_maps(read_model_json(checkpoint)["grid"])
        self.conditions = {"age": ages, **{n: 0.0 for n in self.info.conditions.names if n != "age"}}
        self.reference = None

    def generate(self, engines, info=None, template=None):
        """``(results, seconds)`` of one generation of the check's conditions."""
        from diffdef_runtime.pipeline import generate

        tic = time.perf_counter()
        results = generate(engines, info or self.info, template or self.template, self.conditions,
                           steps=self.steps, seed=0)
        return results, time.perf_counter() - tic

    def compare(self, path: str, results, seconds: float, note: str = "") -> Row:
        dvf = max(float(np.abs(r.dvf - ref.dvf).max()) for r, ref in zip(results, self.reference))
        atlas = max(float(np.abs(r.atlas - ref.atlas).max()) for r, ref in zip(results, self.reference))
        ok = dvf <= TOL_DVF_VOXELS and atlas <= TOL_ATLAS
        return Row(path, "pass" if ok else "fail", dvf, atlas, seconds, note)


def cuda_reason() -> str | None:
    """Why torch cannot use CUDA here, or None."""
    try:
        import torch
    except ImportError as err:
        return f"torch not importable ({err})"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__}: torch.cuda.is_available() is False (no CUDA GPU or CPU build)"
    return None


def ort_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


def tensorrt_reason() -> str | None:
    """Why the native TensorRT backend cannot run here, or None."""
    if importlib.util.find_spec("tensorrt") is None:
        return "tensorrt not installed (pip install 'diffdef[tensorrt]')"
    if importlib.util.find_spec("cuda") is None:
        return "cuda-python not installed (pip install 'diffdef[tensorrt]')"
    return cuda_reason()


# ------------------------------------------------------------------------------------------------- the paths
def run_torch_cpu(check: Check) -> Row:
    from diffdef.generate import TorchEngines

    check.reference, seconds = check.generate(TorchEngines.from_checkpoint(check.checkpoint, "cpu"))
    return Row("torch-cpu", "ref", 0.0, 0.0, seconds, "reference: PyTorch fp32 on the CPU")


def run_ort_cpu(check: Check) -> Row:
    from diffdef_runtime.backends import open_model

    model = open_model("ort", bundle=check.bundle, device="cpu")
    return check.compare("ort-cpu", *check.generate(model.engines, model.info, model.template), "CPUExecutionProvider")


def run_torch_cuda(check: Check) -> Row:
    import torch

    from diffdef.generate import TorchEngines

    torch.backends.cuda.matmul.allow_tf32 = False  # an fp32 comparison
    torch.backends.cudnn.allow_tf32 = False
    engines = TorchEngines.from_checkpoint(check.checkpoint, "cuda")
    check.generate(engines)  # warm-up (cuDNN autotuning, allocations)
    return check.compare("torch-cuda", *check.generate(engines), torch.cuda.get_device_name(0))


def run_train_amp_compile(check: Check) -> Row:
    import copy

    import torch

    from diffdef.generate import load_generation_modules
    from diffdef_runtime.interfaces import all_interfaces

    denoiser, _ = load_generation_modules(check.checkpoint, "cpu")
    spec = all_interfaces(check.info.latent_shape, check.info.conditions.num_conditions, (8, 8, 8))["unet"]
    inputs = [torch.from_numpy(a) for a in spec.sample_inputs(np.random.default_rng(0), batch=2).values()]
    with torch.no_grad():
        want = denoiser(*inputs)
    model = copy.deepcopy(denoiser).cuda().train()
    compiled = torch.compile(model)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-5)
    tic = time.perf_counter()
    with torch.autocast("cuda", dtype=torch.bfloat16):  # as diffdef.training.stage_ldm with mixed_precision
        out = compiled(*[t.cuda() for t in inputs])
    loss = torch.nn.functional.mse_loss(out.float(), torch.zeros_like(out, dtype=torch.float32))
    loss.backward()
    optimiser.step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - tic
    rel = float((out.float().cpu() - want).abs().max() / want.abs().max())
    finite = bool(torch.isfinite(loss)) and all(torch.isfinite(p.grad).all() for p in model.parameters()
                                                 if p.grad is not None)
    ok = rel <= TOL_AMP_REL and finite
    return Row("train-amp-compile", "pass" if ok else "fail", rel, None, seconds,
               f"bf16 autocast + torch.compile, one Adam step; relative error of the output (bound {TOL_AMP_REL:g})"
               + ("" if finite else "; NON-FINITE loss or gradient"))


def _ort_run(check: Check, path: str, providers: list, wanted: str) -> Row:
    from diffdef_runtime.backends.ort import OrtEngines
    from diffdef_runtime.bundle import Bundle

    bundle = Bundle.open(check.bundle)
    engines = OrtEngines(bundle, device="cuda", providers=providers)
    active = engines.active_providers
    missing = [name for name, got in active.items() if got[0] != wanted]
    check.generate(engines, bundle.model_info(), bundle.template_maps())  # warm-up (TensorRT EP builds engines)
    row = check.compare(path, *check.generate(engines, bundle.model_info(), bundle.template_maps()), wanted)
    if missing:  # onnxruntime silently drops an unavailable provider: this run was not on the GPU path
        row.status, row.note = "fail", f"{wanted} not active for {missing}: {active}"
    return row


def run_ort_cuda(check: Check) -> Row:
    return _ort_run(check, "ort-cuda", [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"],
                    "CUDAExecutionProvider")


def run_ort_tensorrt_ep(check: Check) -> Row:
    from diffdef_runtime.backends.ort import select_providers
    from diffdef_runtime.bundle import Bundle

    providers = select_providers(Bundle.open(check.bundle), "cuda")
    return _ort_run(check, "ort-tensorrt-ep", providers, "TensorrtExecutionProvider")


def run_tensorrt(check: Check) -> list[Row]:
    """Build, cache hit, run, CUDA-graph replay: four rows (later ones fail if an earlier one did)."""
    from diffdef_export.tensorrt_build import build_engines
    from diffdef_runtime.backends import open_model

    bundle = Path(shutil.copytree(check.bundle, check.work / "trt_bundle", dirs_exist_ok=True))
    tic = time.perf_counter()
    built = build_engines(bundle, batch=len(check.ages))
    sources = ", ".join(f"{n} <- {json.loads(e.sidecar.read_text())['onnx_file']}" for n, e in built.items())
    rows = [Row("trt-build", "pass", None, None, time.perf_counter() - tic, sources)]
    tic = time.perf_counter()
    again = build_engines(bundle, batch=len(check.ages))
    hit = all(e.cached for e in again.values())
    rows.append(Row("trt-engine-cache", "pass" if hit else "fail", None, None, time.perf_counter() - tic,
                    "every engine from the cache" if hit else "an engine was rebuilt"))
    model = open_model("tensorrt", bundle=bundle, device="cuda:0")
    first, seconds = check.generate(model.engines, model.info, model.template)
    rows.append(check.compare("trt-run", first, seconds, "native TensorRT, no GridSample parsed"))
    second, seconds = check.generate(model.engines, model.info, model.template)
    row = check.compare("trt-cuda-graph", second, seconds, "denoiser replayed from its CUDA graph")
    if any(not np.array_equal(a.dvf, b.dvf) for a, b in zip(first, second)):
        row.status, row.note = "fail", "replay differs from the first run"
    rows.append(row)
    return rows


def run_all(check: Check) -> list[Row]:
    """Every row, in the module docstring's order; a failing path becomes a ``fail`` row, never an exception."""
    rows = [run_torch_cpu(check)]
    no_bundle = "no bundle (--no-export and no --bundle)"
    cuda = cuda_reason()
    providers = ort_providers()
    trt = tensorrt_reason()
    plan = [
        ("ort-cpu", run_ort_cpu, None if check.bundle else no_bundle),
        ("torch-cuda", run_torch_cuda, cuda),
        ("train-amp-compile", run_train_amp_compile, cuda),
        ("ort-cuda", run_ort_cuda, ("onnxruntime has no CUDAExecutionProvider (available: "
                                    f"{providers}; install onnxruntime-gpu>=1.25 instead of onnxruntime)")
         if "CUDAExecutionProvider" not in providers else (None if check.bundle else no_bundle)),
        ("ort-tensorrt-ep", run_ort_tensorrt_ep, ("onnxruntime has no TensorrtExecutionProvider (available: "
                                                  f"{providers})") if "TensorrtExecutionProvider" not in providers
         else (None if check.bundle else no_bundle)),
        ("trt", run_tensorrt, trt or (None if check.bundle else no_bundle)),
    ]
    for name, fn, reason in plan:
        names = ["trt-build", "trt-engine-cache", "trt-run", "trt-cuda-graph"] if name == "trt" else [name]
        if reason:
            rows += [Row(n, "skip", note=reason) for n in names]
            continue
        try:
            out = fn(check)
            rows += out if isinstance(out, list) else [out]
        except Exception as err:  # noqa: BLE001 - report and go on with the other paths
            last = traceback.format_exception_only(type(err), err)[-1].strip()
            rows += [Row(n, "fail", note=last[:300]) for n in names if n not in {r.path for r in rows}]
    return rows


def format_table(rows: list[Row]) -> str:
    def num(v, spec):
        width = spec.split(".")[0]
        return f"{'-':>{width}}" if v is None else format(v, spec)

    lines = [f"{'path':<18} {'status':<6} {'dvf err':>9} {'atlas err':>9} {'seconds':>8}  note",
             "-" * 100]
    for r in rows:
        lines.append(f"{r.path:<18} {r.status:<6} {num(r.dvf_err, '9.2e')} {num(r.atlas_err, '9.2e')} "
                     f"{num(r.seconds, '8.2f')}  {r.note}")
    counts = {s: sum(r.status == s for r in rows) for s in ("pass", "fail", "skip")}
    lines.append(f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped "
                 f"(bounds: dvf {TOL_DVF_VOXELS:g} voxel, atlas {TOL_ATLAS:g}, against PyTorch fp32 on the CPU)")
    return "\n".join(lines)


@click.command()
@click.option("--checkpoint", type=click.Path(exists=True, path_type=Path), default=None,
              help="Trained checkpoint (default: a tiny untrained diffeomorphic model on the 4 mm grid).")
@click.option("--bundle", type=click.Path(exists=True, path_type=Path), default=None,
              help="Its exported fp32 bundle (default: exported here from the checkpoint).")
@click.option("--ages", default="50,70", show_default=True)
@click.option("--steps", default=5, show_default=True)
@click.option("--export/--no-export", default=True, show_default=True,
              help="Export a bundle when none is given (the ONNX Runtime and TensorRT rows need one).")
@click.option("--work-dir", type=click.Path(path_type=Path), default=None)
def main(checkpoint, bundle, ages, steps, export, work_dir):
    from diffdef_runtime.conditions import parse_age_list

    tic = time.perf_counter()
    work = Path(work_dir or tempfile.mkdtemp(prefix="gpu_check-"))
    work.mkdir(parents=True, exist_ok=True)
    if checkpoint is None:
        from diffdef_export.testing import make_untrained_checkpoint

        checkpoint = make_untrained_checkpoint(work / "checkpoint", grid="4mm", seed=0, diffeomorphic=True,
                                               integration_down=2)
    if bundle is None and export:
        from diffdef_export.bundle_writer import export_bundle

        bundle = export_bundle(checkpoint, work / "bundle", force=True)
    check = Check(checkpoint, bundle, parse_age_list(ages), steps, work)
    print(format_table(run_all(check)))
    print(f"checkpoint {checkpoint}, bundle {bundle}, ages {ages}, {steps} DDIM steps; "
          f"total {time.perf_counter() - tic:.0f} s")


if __name__ == "__main__":
    main()
