"""``diffdef-run``: conditions in, atlases out (heavy imports happen inside the command)."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

import click

from diffdef_runtime.api import DEFAULT_BUNDLE  # one default bundle path (numpy-light import)


def _conditions(age: str | None, sex: str | None, ventricles: str | None) -> dict:
    """Parsed condition values; impossible ones (negative age, unknown sex, ...) are usage errors naming them."""
    from diffdef_runtime.conditions import check_possible, parse_age_list

    values: dict = {}
    if age is not None:
        try:
            values["age"] = parse_age_list(age)
            check_possible("age", values["age"])
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="--age") from err
    if sex is not None:
        try:
            check_possible("sex", [sex])
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="--sex") from err
        values["sex"] = sex
    if ventricles is not None:
        try:
            values["ventricle_volume_ml"] = [float(v) for v in ventricles.split(",")]
        except ValueError as err:
            raise click.BadParameter(f"{ventricles!r} is not a number or comma-separated numbers (mL)",
                                     param_hint="--ventricles") from err
        try:
            check_possible("ventricle_volume_ml", values["ventricle_volume_ml"])
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="--ventricles") from err
    return values


def _check_distinct(values: dict) -> None:
    """Each condition writes one folder: the same condition asked twice (``--age 70,70``) is a usage error."""
    from diffdef_runtime.conditions import parse_sex
    from diffdef_runtime.outputs import duplicate_labels

    lengths = {len(v) for v in values.values() if isinstance(v, list)}
    if len(lengths) != 1:
        return  # one condition each, or unequal lists (the model's check names those)
    n = lengths.pop()
    rows = [{name: (v[i] if isinstance(v, list) else parse_sex(v) if name == "sex" else v)
             for name, v in values.items()} for i in range(n)]
    twice = duplicate_labels(rows)
    if twice:
        raise click.UsageError(f"condition {twice[0]} is asked more than once; each condition writes one folder")


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
              help="NIfTIs as .nii.gz (gzip level 1) or uncompressed .nii (faster to write, about 1.2x larger).")
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

    from diffdef_runtime import atomic
    from diffdef_runtime.api import resolve_source
    from diffdef_runtime.backends import open_model
    from diffdef_runtime.conditions import ExtrapolationWarning
    from diffdef_runtime.outfolder import FolderBusyError, check_out_folder, locked_folder
    from diffdef_runtime.outputs import new_run_id, output_names, write_result
    from diffdef_runtime.pipeline import generate

    # Everything that can be checked without the model is checked first (exit status 2, nothing computed).
    output_list = tuple(o.strip() for o in outputs.split(",") if o.strip())
    try:
        output_names(output_list)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--outputs") from err
    conditions = _conditions(age, sex, ventricles)
    if not conditions:
        raise click.UsageError("give at least one condition, e.g. --age 70")
    _check_distinct(conditions)
    try:
        bundle, checkpoint = resolve_source(bundle, checkpoint)
    except ValueError as err:
        raise click.UsageError(str(err)) from err
    try:
        check_out_folder(out_dir, overwrite)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--out") from err

    run_id = new_run_id()
    try:  # held until the command ends; released by the kernel if the process is killed
        click.get_current_context().with_resource(
            locked_folder(out_dir, f"diffdef-run pid {os.getpid()}, run {run_id}", wait=wait))
        check_out_folder(out_dir, overwrite)  # again: a run we waited for may have filled it
    except FolderBusyError as err:
        raise click.ClickException(str(err)) from err
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--out") from err
    for stale in atomic.remove_stale(out_dir):
        logging.getLogger(__name__).info("removed %s, left by a killed run", stale)
    try:
        model = open_model(backend, bundle=bundle, checkpoint=checkpoint, device=device,
                           verify="full" if verify else True)
    except (ValueError, RuntimeError, OSError) as err:
        raise click.ClickException(str(err)) from err

    # Check the conditions against the model before the long part: a missing or unknown condition is an
    # error now, and a value outside the trained range warns now (then runs).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ExtrapolationWarning)
        try:
            model.info.conditions.normalise(conditions)
        except ValueError as err:
            raise click.UsageError(str(err)) from err
    for warning in caught:
        click.echo(f"warning: {warning.message}", err=True)

    steps = steps or model.info.default_steps
    bar = tqdm(total=steps, desc=f"denoise ({model.engines.name})", dynamic_ncols=True)

    def progress(done, total):
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExtrapolationWarning)  # already reported above
            results = generate(model.engines, model.info, model.template, conditions, steps=steps,
                               sampler=sampler, seed=seed, samples=samples, guidance=guidance, progress=progress)
    except (ValueError, RuntimeError) as err:
        raise click.ClickException(str(err)) from err
    finally:
        bar.close()
    click.echo(f"run {run_id}: writing {len(results)} folder(s) into {out_dir}", err=True)
    folders = []
    for result in results:
        folder = write_result(result, model.affine, out_dir, extra={"source": model.source}, run_id=run_id,
                              outputs=output_list, compress=compress)
        folders.append(folder)
        click.echo(f"{folder}: ventricles {result.ventricle_volume_ml:.1f} mL, "
                   f"denoise {result.timings_s['denoise']:.2f} s, decode {result.timings_s['decode']:.2f} s, "
                   f"warp {result.timings_s['warp']:.2f} s (per condition)")
    if len(results) > 1 and "preview" in output_list:  # a series; one atlas has its own folder only
        from diffdef_runtime.series import write_series

        template_ml = float(model.template.ventricle_prob.sum() * model.info.voxel_volume_ml)
        series = write_series(results, out_dir, folders, template_ventricle_ml=template_ml, affine=model.affine,
                              meta={"model": model.source})
        click.echo(f"{series.index}: the {len(results)} conditions ({series.summary.name}, {series.volumes.name})")


if __name__ == "__main__":
    sys.exit(main())
