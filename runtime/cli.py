"""``diffdef-run``: conditions in, atlases out (heavy imports happen inside the command)."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import click

from diffdef_runtime.api import DEFAULT_BUNDLE  # one default bundle path (numpy-light import)


_FLAG = {"age": "--age", "sex": "--sex", "ventricle_volume_ml": "--ventricles"}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--age", help="Age in years: 70, a list 50,60,70 or a range 50:80:5 (one batch).")
@click.option("--sex", help="F or M, for models conditioned on sex.")
@click.option("--ventricles", help="Lateral ventricle volume in mL, for models conditioned on it.")
@click.option("--bundle", type=click.Path(path_type=Path), default=None,
              help=f"Exported bundle (diffdef-export) [default: {DEFAULT_BUNDLE}].")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="Training output folder, run with --backend torch (no export needed).")
@click.option("--backend", type=click.Choice(["ort", "tensorrt", "torch"]), default="ort", show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda (ort: CUDA/TensorRT providers).")
@click.option("--steps", type=click.IntRange(1, 1000), default=None,
              help="Sampler steps [default: the model's default_steps, else 20].")
@click.option("--sampler", type=click.Choice(["ddim", "ddpm"]), default="ddim", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--samples", type=click.IntRange(1, 256), default=1, show_default=True,
              help="DVFs drawn per condition and averaged (an atlas is a population mean).")
@click.option("--guidance", type=float, default=1.0, show_default=True, help="Classifier-free guidance scale.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("atlases"), show_default=True)
@click.option("--outputs", default=",".join(("atlas", "dvf", "jacobian", "preview")), show_default=True,
              help="Files per condition, comma-separated subset of atlas,dvf,jacobian,preview (record.json always).")
@click.option("--compress/--no-compress", default=True, show_default=True,
              help="NIfTIs as .nii.gz (gzip, ISA-L level 1) or uncompressed .nii (1.06x larger DVF, 3.4x atlas).")
@click.option("--overwrite", is_flag=True,
              help="Write into a non-empty --out, replacing (whole) the condition folders this run writes.")
@click.option("--wait", is_flag=True, help="If another run writes to --out, wait for it instead of failing.")
@click.option("--verify", is_flag=True,
              help="Re-hash every bundle file (by default large files unchanged since last hashed are trusted).")
@click.option("-v", "--verbose", is_flag=True)
def main(age, sex, ventricles, bundle, checkpoint, backend, device, steps, sampler, seed, samples, guidance,
         out_dir, outputs, compress, overwrite, wait, verify, verbose):
    """Generate conditional atlases: writes atlas/dvf/jacobian NIfTIs, a PNG preview and a JSON record per
    condition into OUT/<condition>/; for several conditions also OUT/summary.png, OUT/volumes.png and
    OUT/index.html (open it in a browser).

    Each folder is written whole by one run (its run id is in record.json); a second run on the same OUT fails
    at once (or waits, with --wait). Exit status 2: bad arguments, found before any model is opened.

    Example: diffdef-run --age 50:80:10 --samples 4 --out atlases
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from tqdm.auto import tqdm

    from diffdef_runtime.api import AtlasGenerator, ConditionError, condition_values, output_run, resolve_source
    from diffdef_runtime.conditions import ExtrapolationWarning
    from diffdef_runtime.outfolder import FolderBusyError
    from diffdef_runtime.outputs import output_names

    # Everything that can be checked without the model is checked first (exit status 2, nothing computed).
    output_list = tuple(o.strip() for o in outputs.split(",") if o.strip())
    try:
        output_names(output_list)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--outputs") from err
    if age is None and sex is None and ventricles is None:
        raise click.UsageError("give at least one condition, e.g. --age 70")
    try:
        conditions = condition_values(age, sex, ventricles)
    except ConditionError as err:
        raise click.BadParameter(str(err), param_hint=_FLAG[err.name]) from err
    except ValueError as err:
        raise click.UsageError(str(err)) from err
    try:
        bundle, checkpoint = resolve_source(bundle, checkpoint)
    except ValueError as err:
        raise click.UsageError(str(err)) from err
    try:  # held until the command ends; released by the kernel if the process is killed
        run_id = click.get_current_context().with_resource(
            output_run(out_dir, overwrite=overwrite, wait=wait, owner="diffdef-run"))
    except FolderBusyError as err:
        raise click.ClickException(str(err)) from err
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--out") from err

    try:
        generator = AtlasGenerator(bundle, checkpoint, backend=backend, device=device,
                                   verify="full" if verify else True)
    except (ValueError, RuntimeError, OSError) as err:
        raise click.ClickException(str(err)) from err
    try:  # a missing or unknown condition is an error now; a value outside the trained range warns now
        for message in generator.check(conditions):
            click.echo(f"warning: {message}", err=True)
    except ValueError as err:
        raise click.UsageError(str(err)) from err

    steps = steps or generator.model.info.default_steps
    bar = tqdm(total=steps, desc=f"denoise ({generator.model.engines.name})", dynamic_ncols=True)

    def progress(done, total):
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExtrapolationWarning)  # already reported above
            results = generator.generate(conditions=conditions, steps=steps, sampler=sampler, seed=seed,
                                         samples=samples, guidance=guidance, progress=progress)
    except (ValueError, RuntimeError) as err:
        raise click.ClickException(str(err)) from err
    finally:
        bar.close()
    click.echo(f"run {run_id}: writing {len(results)} folder(s) into {out_dir}", err=True)
    folders = generator.write(results, out_dir, run_id, outputs=output_list, compress=compress)
    for folder, result in zip(folders, results):
        click.echo(f"{folder}: ventricles {result.ventricle_volume_ml:.1f} mL, "
                   f"denoise {result.timings_s['denoise']:.2f} s, decode {result.timings_s['decode']:.2f} s, "
                   f"warp {result.timings_s['warp']:.2f} s (per condition)")
    if len(results) > 1 and "preview" in output_list:
        click.echo(f"{Path(out_dir) / 'index.html'}: the {len(results)} conditions (summary.png, volumes.png)")


if __name__ == "__main__":
    sys.exit(main())
