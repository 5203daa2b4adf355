"""``diffdef-eval``: conditional atlases judged against held-out real subjects and honest baselines.

    diffdef-eval --manifest prepared/manifest.csv --checkpoint runs/ixi --out eval/ixi \\
        [--compare synthetic=runs/default] [--label-scheme muse] [--no-deformable]

Reads a ``diffdef-prepare`` manifest (split == test are scored, split == train build the linear average),
generates one atlas per distinct condition tuple of the held-out subjects with the model and every ``--compare``
model, scores them and the template and the linear average (see :mod:`diffdef.evaluate.evaluation`), prints a
table and writes ``per_subject.csv``, ``per_bin.csv``, ``summary.json``, ``ventricle_volume_vs_age.png``,
``dice_per_bin.png`` and ``atlases_by_age.png`` into ``--out`` (built in a temporary sibling folder and renamed
into place).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click


def _parse_compare(ctx, param, values):
    out = {}
    for text in values:
        name, sep, path = text.partition("=")
        name = name.strip()
        if not sep or not name or not path.strip():
            raise click.BadParameter(f"expected NAME=PATH, got {text!r}")
        if name in out or name in ("model", "template", "linear_average"):
            raise click.BadParameter(f"compare name {name!r} is reserved or repeated")
        out[name] = Path(path.strip())
    return out


def _parse_ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--manifest", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Prepared manifest CSV (diffdef-prepare): path, labels, age, sex, split, ...")
@click.option("--checkpoint", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Trained checkpoint folder (torch backend).")
@click.option("--bundle", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Exported bundle folder.")
@click.option("--backend", type=click.Choice(["torch", "ort"]), default="torch", show_default=True)
@click.option("--compare", "compare", multiple=True, callback=_parse_compare,
              help="NAME=PATH: another model (checkpoint folder or bundle) scored the same way; repeatable.")
@click.option("--label-scheme", type=click.Choice(["muse", "diffdef"]), default="muse", show_default=True,
              help="Label ids of the subjects' label maps.")
@click.option("--window", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="Linear average: training subjects within +- this many years (widened to the 3 nearest).")
@click.option("--steps", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--samples", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--guidance", type=float, default=1.0, show_default=True)
@click.option("--batch", type=click.IntRange(min=1), default=8, show_default=True,
              help="Conditions generated per call (memory).")
@click.option("--curve-ages", default="20:85:5", show_default=True, help="Ages of the model's volume curve.")
@click.option("--no-deformable", is_flag=True, help="Skip the deformable-registration protocol.")
@click.option("--template-labels", type=click.Choice(["template", "fused"]), default="template", show_default=True,
              help="Labels every warped-template method carries: the template's own, or the training subjects' "
                   "fused onto the template (the subjects' label definition; registers every training subject).")
@click.option("--demons-iterations", default="50,25", show_default=True,
              help="Demons iterations per level (levels shrink 2, 1; one value = one full-resolution level).")
@click.option("--demons-sigma", type=click.FloatRange(min=0, min_open=True), default=1.5, show_default=True,
              help="Demons field smoothing, voxels.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out.")
@click.option("--quiet", is_flag=True)
def main(manifest, checkpoint, bundle, backend, compare, label_scheme, window, steps, samples, seed, guidance,
         batch, curve_ages, no_deformable, template_labels, demons_iterations, demons_sigma, out, overwrite, quiet):
    """Score the model's atlases (and --compare models, the template, the linear average) on held-out subjects."""
    from diffdef.evaluate import report

    if (checkpoint is None) == (bundle is None):
        raise click.UsageError("give exactly one of --checkpoint and --bundle")
    if checkpoint is not None and backend != "torch":
        raise click.UsageError("--checkpoint runs the PyTorch modules: use --backend torch (or --bundle)")
    try:
        report.check_output(out, overwrite)
    except FileExistsError as err:
        raise click.UsageError(str(err)) from None
    from diffdef_runtime.conditions import parse_age_list

    try:
        ages = parse_age_list(curve_ages)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--curve-ages") from None
    iterations = _parse_ints(demons_iterations)
    if not iterations or len(iterations) > 2:
        raise click.BadParameter("one or two iteration counts", param_hint="--demons-iterations")

    def log(message: str) -> None:
        if not quiet:
            click.echo(message, err=True)

    from diffdef.data.manifest import ManifestError
    from diffdef.evaluate.atlases import MODEL, open_source
    from diffdef.evaluate.cohort import read_cohort
    from diffdef.evaluate.deformable import DemonsSettings
    from diffdef.evaluate.evaluation import evaluate
    from diffdef.evaluate.fused_labels import FUSION_REGISTRATION
    from diffdef.template import load_template
    from diffdef_runtime.grid import GRIDS

    tic = time.perf_counter()
    sources = [open_source(MODEL, checkpoint or bundle, backend)]
    sources += [open_source(name, path, backend) for name, path in compare.items()]
    shape = tuple(sources[0].opened.template.t1.shape)
    grid = next((g for g in GRIDS.values() if tuple(g.shape) == shape), None)
    if grid is None:
        raise click.ClickException(f"the model's template grid {shape} is not a known grid")
    for s in sources[1:]:
        if tuple(s.opened.template.t1.shape) != shape:
            raise click.ClickException(f"--compare {s.name}: grid {s.opened.template.t1.shape} differs from the model's {shape}")
    needed = tuple(dict.fromkeys(n for s in sources for n in s.opened.info.conditions.names))
    try:
        subjects = read_cohort(manifest, conditions=needed, load=True, grid=grid)
    except (ManifestError, ValueError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from None
    settings = None
    if not no_deformable:
        shrink = (2, 1) if len(iterations) == 2 else (1,)
        settings = DemonsSettings(iterations=iterations, shrink=shrink, sigma_voxels=demons_sigma)
    template = load_template(grid)
    try:
        result = evaluate(subjects, sources, template, scheme=label_scheme, window=window, steps=steps, seed=seed,
                          samples=samples, guidance=guidance, batch=batch, deformable=settings, curve_ages=ages,
                          template_labels=template_labels, log=log)
    except ValueError as err:  # e.g. no held-out subject, or nothing to fuse the template's labels from
        raise click.ClickException(str(err)) from None
    meta = {
        "command": sys.argv,
        "options": {"manifest": str(manifest.resolve()), "backend": backend, "label_scheme": label_scheme,
                    "window": window, "steps": steps, "samples": samples, "seed": seed, "guidance": guidance,
                    "batch": batch, "curve_ages": ages, "deformable": not no_deformable,
                    "template_labels": template_labels, "out": str(out)},
        "models": {s.name: {"path": s.path, "backend": s.backend, "conditions": list(s.opened.info.conditions.names)}
                   for s in sources},
        "registration": settings.describe() if settings else None,
        "template_label_fusion": FUSION_REGISTRATION.describe() if template_labels == "fused" else None,
        "grid": grid.name,
        "template_labels": ("the template's own labels (diffdef scheme)" if template_labels == "template" else
                            "the training subjects' labels fused onto the template (fraction of subjects per class)")
                           + ", class maps warped as float maps and thresholded at > 0.5",
        "method_means": report.method_means(result),
        "wilcoxon": "scipy.stats.wilcoxon, paired, two-sided, zero differences dropped (zero_method='wilcox')",
        "seconds_total": time.perf_counter() - tic,
    }
    with report.output_folder(out, overwrite) as folder:
        report.write_all(folder, result, meta)
    click.echo(report.table(result))
    if settings:
        per = result["timings_s"].get("deformable_per_pair")
        click.echo(f"deformable protocol: {settings.describe()['method']}, {per:.2f} s per pair" if per else "")
    click.echo(f"wrote {out} in {time.perf_counter() - tic:.1f} s")


if __name__ == "__main__":
    main()
