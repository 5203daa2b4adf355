"""``diffdef-train ae|reg|ldm|all``: the three training stages (heavy imports happen inside the command)."""

from __future__ import annotations

import json
import logging
import sys

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("stage", type=click.Choice(["ae", "reg", "ldm", "all"]))
@click.option("--preset", type=click.Choice(["tiny", "default", "paper"]), default="default", show_default=True,
              help="tiny: tests (seconds); default: 2 mm synthetic cohort on a CPU; paper: 160x224x160 on a GPU.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="JSON file whose (partial) tree overrides the preset.")
@click.option("--data", "data_manifest", type=click.Path(dir_okay=False), default=None, metavar="MANIFEST",
              help="Train on real scans: a manifest written by diffdef-prepare (its train split). Sets the manifest "
                   "route, the grid of its images and conditions age (+ sex when it has a sex column).")
@click.option("--synthetic", "synthetic_dir", type=click.Path(file_okay=False, exists=True), default=None,
              metavar="DIR", help="Read the synthetic cohort from a diffdef-synth folder instead of generating it "
                                  "(the same data, bit for bit; sets data.synthetic_dir).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override one setting, e.g. --set ldm.joint_steps=100 --set data.source=manifest.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Output folder = checkpoint folder [default: runs/<preset>].")
@click.option("--restart", is_flag=True, help="Discard saved state of these stages and train them again.")
@click.option("--print-config", is_flag=True, help="Print the resolved configuration and exit.")
@click.option("-v", "--verbose", is_flag=True)
def main(stage, preset, config_file, data_manifest, synthetic_dir, overrides, out_dir, restart, print_config, verbose):
    """Train DiffDef: STAGE is ae (autoencoder), reg (registration net), ldm (diffusion + DVF decoder) or all.

    A run killed at any moment resumes from its last checkpoint when the same command is run again.
    Data-parallel: `torchrun --nproc-per-node 2 -m diffdef.training.cli all ...`.

    Examples: diffdef-train all --preset default --out runs/default
              diffdef-train all --data data/ixi/manifest.csv --out runs/ixi
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from diffdef.training.config import load_config

    try:
        if synthetic_dir is not None:
            overrides = (f"data.synthetic_dir={json.dumps(str(synthetic_dir))}", *overrides)
        cfg = load_config(preset, config_file, list(overrides), data_manifest)
    except (ValueError, FileNotFoundError) as err:
        from diffdef.data.manifest import ManifestError

        manifest_error = data_manifest is not None and isinstance(err, (ManifestError, FileNotFoundError))
        raise click.BadParameter(str(err), param_hint="--data" if manifest_error else None) from err
    if print_config:
        click.echo(json.dumps(cfg, indent=2, sort_keys=True))
        return
    from diffdef.training.train import TrainingDataError, train

    out = out_dir or f"runs/{preset}"
    try:
        train(stage, cfg, out, restart=restart)
    except TrainingDataError as err:  # nothing was written to --out
        if data_manifest is not None:
            raise click.BadParameter(str(err), param_hint="--data") from err
        raise click.ClickException(f"training data: {err}") from err
    click.echo(f"trained {stage} into {out}", err=True)


if __name__ == "__main__":
    sys.exit(main())
