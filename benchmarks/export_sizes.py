"""Export time and file sizes of default- and paper-sized models, fp32 and fp16 (untrained random checkpoints).

    python benchmarks/export_sizes.py                       # all configurations below
    python benchmarks/export_sizes.py --configs default@2mm paper@paper --precisions fp16

Each configuration is a model preset on a training grid (``make_untrained_checkpoint``); each export runs the
full ``export_bundle`` (torch -> ONNX, fp16 conversion, ONNX Runtime parity checks at batch 2, templates) with
the in-process export cache off, so every number is a cold export. Per component: seconds to export (and
convert), file size, relative parity error; per bundle: total seconds (including verification) and peak RSS.
"""

from __future__ import annotations

import argparse
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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from diffdef_export.bundle_writer import export_bundle
    from diffdef_export.testing import make_untrained_checkpoint

    work = Path(tempfile.mkdtemp(prefix="export_sizes-", dir=args.workdir))
    header = (f"| model@grid | precision | component | export s | size MB | max rel err | bundle total s | "
              f"bundle MB | peak RSS GB |")
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


if __name__ == "__main__":
    sys.exit(main())
