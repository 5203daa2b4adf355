"""Export time and file sizes of default- and paper-sized models, fp32 and fp16 (untrained random checkpoints).

    python benchmarks/export_sizes.py                       # all configurations below
    python benchmarks/export_sizes.py --configs default@2mm paper@paper --precisions fp16

Each configuration is a model preset on a training grid (``make_untrained_checkpoint``); each export runs the
full ``export_bundle`` (torch -> ONNX, fp16 conversion, ONNX Runtime parity checks at batch 2, templates) with
the in-process export cache off, so every number is a cold export. Per component: seconds to export (and
convert), file size, relative parity error; per bundle: total seconds (including verification) and peak RSS.

``--export-only`` skips the bundle (no parity checks, no templates): torch -> ONNX (+ fp16 conversion) only.
For the paper model on the paper grid the batch-2 parity check of the full-resolution decoder needs more memory
than a 23 GB machine has (one 128-channel activation at 160x224x160 is 2.9 GB per sample in float32).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import resource
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

CONFIGS = ("default@2mm", "default@paper", "paper@2mm", "paper@paper")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), help="preset@grid pairs")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "fp16"], choices=["fp32", "fp16"])
    parser.add_argument("--workdir", type=Path, default=None, help="where checkpoints and bundles go (temporary)")
    parser.add_argument("--export-only", action="store_true", help="ONNX export (+ fp16) only: no bundle, no parity")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from diffdef_export.bundle_writer import export_bundle
    from diffdef_export.testing import make_untrained_checkpoint

    work = Path(tempfile.mkdtemp(prefix="export_sizes-", dir=args.workdir))
    header = ("| model@grid | precision | component | export s | size MB | max rel err | bundle total s | "
              "bundle MB | peak RSS GB |")
    print(header)
    print("|---" * (header.count("|") - 1) + "|", flush=True)
    try:
        for config in args.configs:
            preset, grid = config.split("@")
            tic = time.perf_counter()
            ckpt = make_untrained_checkpoint(work / f"ckpt-{preset}-{grid}", grid=grid, preset=preset)
            print(f"<!-- {config}: checkpoint written in {time.perf_counter() - tic:.1f} s -->", flush=True)
            for precision in args.precisions:
                out = work / f"bundle-{preset}-{grid}-{precision}"
                if args.export_only:
                    _export_only(ckpt, out, config, precision)
                    shutil.rmtree(out, ignore_errors=True)
                    continue
                reports: list = []
                try:
                    export_bundle(ckpt, out, fp16=precision == "fp16", use_cache=False, report=reports)
                except Exception as err:  # report and go on with the next configuration
                    print(f"| {config} | {precision} | FAILED: {type(err).__name__}: {str(err)[:300]} |", flush=True)
                    traceback.print_exc(file=sys.stderr)
                    continue
                report = reports[0]
                total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB -> GB (Linux)
                for c in report.components:
                    print(f"| {config} | {precision} | {c.name} | {c.seconds:.1f} | {_mb(c.size_bytes)} | "
                          f"{c.max_rel:.1e} | {report.seconds:.0f} | {_mb(total)} | {peak:.1f} |", flush=True)
                shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _export_only(ckpt: Path, out: Path, config: str, precision: str) -> None:
    """torch -> ONNX of the three components (+ the Gather warp), converted to fp16 if asked; no verification."""
    import onnx

    from diffdef_export.bundle_writer import FP16_COMPONENTS, _save_onnx
    from diffdef_export.fp16 import convert_to_fp16
    from diffdef_export.onnx_export import export_module, export_onnx, load_checkpoint, resolve_output_grid
    from diffdef_export.warp_gather import GatherWarpModule

    tic = time.perf_counter()
    checkpoint = load_checkpoint(ckpt)
    grid = resolve_output_grid(checkpoint.training_grid)
    exported = export_onnx(checkpoint, out, grid, use_cache=False)
    seconds = {name: e.seconds for name, e in exported.items()}
    files = {name: e.path for name, e in exported.items()}
    t0 = time.perf_counter()
    gather_if = dataclasses.replace(_interface(checkpoint, grid, "warp"), name="warp_gather", file="warp_gather.onnx")
    export_module(GatherWarpModule().eval(), gather_if, out / gather_if.file)
    seconds["warp_gather"], files["warp_gather"] = time.perf_counter() - t0, out / gather_if.file
    if precision == "fp16":
        for name in (n for n in FP16_COMPONENTS if n in files):
            t0 = time.perf_counter()
            path = files[name]
            converted = convert_to_fp16(onnx.load(str(path)))
            for stale in (path, Path(f"{path}.data")):
                stale.unlink(missing_ok=True)
            _save_onnx(converted, path)
            del converted
            seconds[name] += time.perf_counter() - t0
    total = time.perf_counter() - tic
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    size_all = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    for name, path in files.items():
        size = path.stat().st_size + (Path(f"{path}.data").stat().st_size if Path(f"{path}.data").exists() else 0)
        print(f"| {config} | {precision} | {name} | {seconds[name]:.1f} | {_mb(size)} | not checked (export only) | "
              f"{total:.0f} | {_mb(size_all)} (ONNX only) | {peak:.1f} |", flush=True)


def _interface(checkpoint, grid, name):
    from diffdef_export.onnx_export import interfaces_for

    return interfaces_for(checkpoint, grid)[name]


if __name__ == "__main__":
    sys.exit(main())
