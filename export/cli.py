"""``diffdef-export CHECKPOINT_DIR -o BUNDLE_DIR [--fp16] [--tensorrt] [--grid G] [--tensorrt-batch N] [--force]``.

Heavy imports (torch, monai, onnx) happen inside the command, so ``--help`` is instant.
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

GRID_CHOICES = ("paper", "2mm", "4mm")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("checkpoint_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path),
              help="Bundle folder to write (must not exist or be empty, unless --force).")
@click.option("--fp16", is_flag=True, help="Mixed precision: fp16 weights/activations, fp32 I/O, warp and norms.")
@click.option("--tensorrt", is_flag=True, help="Also build TensorRT engines (needs TensorRT and a CUDA GPU).")
@click.option("--grid", type=click.Choice(GRID_CHOICES), default=None,
              help="Output grid of the atlases (default: the training grid; a finer grid upsamples the DVF).")
@click.option("--tensorrt-batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Static batch size of the TensorRT engines.")
@click.option("--force", is_flag=True, help="Replace a non-empty output folder.")
@click.option("-v", "--verbose", is_flag=True, help="Log progress of each step.")
def main(checkpoint_dir: Path, output: Path, fp16: bool, tensorrt: bool, grid: str | None, tensorrt_batch: int,
         force: bool, verbose: bool) -> None:
    """Export a trained DiffDef checkpoint (a `diffdef-train` folder) to a verified ONNX bundle."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("diffdef_export").setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:  # e.g. "torchvision is not installed. Skipping torchvision::nms" on every export
        logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    if not checkpoint_dir.is_dir():
        raise click.ClickException(f"checkpoint folder not found: {checkpoint_dir}")
    if not (checkpoint_dir / "model.json").is_file():
        raise click.ClickException(f"{checkpoint_dir} is not a DiffDef checkpoint: no model.json (train one with "
                                   "`diffdef-train all`)")
    if output.exists() and not output.is_dir():
        raise click.ClickException(f"output path {output} exists and is not a folder")
    if output.is_dir() and any(output.iterdir()) and not force:
        raise click.ClickException(f"output folder {output} exists and is not empty; choose another folder or pass "
                                   "--force to replace it")

    from diffdef_export.bundle_writer import export_bundle  # heavy: torch, monai, onnx
    from diffdef_export.errors import ExportError

    reports: list = []
    click.echo(f"exporting {checkpoint_dir} -> {output} ({'fp16' if fp16 else 'fp32'})")
    try:
        export_bundle(checkpoint_dir, output, fp16=fp16, tensorrt=tensorrt, grid=grid,
                      tensorrt_batch=tensorrt_batch, force=force, report=reports)
    except ExportError as err:
        raise click.ClickException(str(err)) from None
    report = reports[0]
    name_w = max(len("component"), *(len(c.name) for c in report.components))
    file_w = max(len("file"), *(len(c.file) for c in report.components))
    click.echo(f"{'component':<{name_w}} {'file':<{file_w}} {'export s':>9} {'size':>10} {'max abs':>10} "
               f"{'max rel':>10} {'tolerance':>9}  TensorRT-unsupported ops")
    for c in report.components:
        unsupported = ", ".join(c.unsupported) or "-"
        if unsupported == "GridSample":
            unsupported = "GridSample (5-D: TensorRT >= 11.2)"
        click.echo(f"{c.name:<{name_w}} {c.file:<{file_w}} {c.seconds:>9.1f} {_size(c.size_bytes):>10} "
                   f"{c.max_abs:>10.2e} {c.max_rel:>10.2e} {c.tolerance:>9.0e}  {unsupported}")
    click.echo("relative error = max|onnx - torch| / max|torch| (ONNX Runtime CPU vs PyTorch fp32, batch 2)")
    for name, engine in report.engines.items():
        click.echo(f"engine {name}: {engine.path} ({'cached' if engine.cached else f'{engine.seconds:.1f} s'})")
    click.echo(f"bundle written: {report.bundle} (grid {report.grid}, {report.precision}, {report.seconds:.1f} s)")


if __name__ == "__main__":  # pragma: no cover
    main()
