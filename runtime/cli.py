"""``diffdef-run``: conditions in, atlases out (heavy imports happen inside the command)."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import click

DEFAULT_BUNDLE = Path("runs/default/bundle")  # same as diffdef_runtime.api.DEFAULT_BUNDLE


def _conditions(age: str | None, sex: str | None, ventricles: str | None) -> dict:
    from diffdef_runtime.conditions import parse_age_list

    values: dict = {}
    if age is not None:
        try:
            values["age"] = parse_age_list(age)
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="--age") from err
    if sex is not None:
        values["sex"] = sex
    if ventricles is not None:
        try:
            values["ventricle_volume_ml"] = [float(v) for v in ventricles.split(",")]
        except ValueError as err:
            raise click.BadParameter(f"{ventricles!r} is not a number or comma-separated numbers (mL)",
                                     param_hint="--ventricles") from err
    return values


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
@click.option("-v", "--verbose", is_flag=True)
def main(age, sex, ventricles, bundle, checkpoint, backend, device, steps, sampler, seed, samples, guidance,
         out_dir, verbose):
    """Generate conditional atlases: writes atlas/dvf/jacobian NIfTIs, a PNG preview and a JSON record per
    condition into OUT/<condition>/.

    Example: diffdef-run --age 50:80:10 --samples 4 --out atlases
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from tqdm.auto import tqdm

    from diffdef_runtime.api import resolve_source
    from diffdef_runtime.backends import open_model
    from diffdef_runtime.conditions import ExtrapolationWarning
    from diffdef_runtime.outputs import write_result
    from diffdef_runtime.pipeline import generate

    conditions = _conditions(age, sex, ventricles)
    if not conditions:
        raise click.UsageError("give at least one condition, e.g. --age 70")
    try:
        bundle, checkpoint = resolve_source(bundle, checkpoint)
    except ValueError as err:
        raise click.UsageError(str(err)) from err
    try:
        model = open_model(backend, bundle=bundle, checkpoint=checkpoint, device=device)
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
    for result in results:
        folder = write_result(result, model.affine, out_dir, extra={"source": model.source})
        click.echo(f"{folder}: ventricles {result.ventricle_volume_ml:.1f} mL, "
                   f"denoise {result.timings_s['denoise']:.2f} s, decode {result.timings_s['decode']:.2f} s, "
                   f"warp {result.timings_s['warp']:.2f} s (per condition)")


if __name__ == "__main__":
    sys.exit(main())
