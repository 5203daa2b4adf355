"""``diffdef-prepare``: the click command (heavy imports inside it). See ``docs/PREPARE.md``."""

from __future__ import annotations

import sys

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("table", required=False, type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Output folder.")
@click.option("--merge", "merge_dir", type=click.Path(file_okay=False),
              help="Only merge the per-subject records of DIR (after --shard runs) into manifest/failures/qc.html.")
@click.option("--id-column", default="id", show_default=True)
@click.option("--image-column", default=None, help="Column of image paths (relative to the table's folder).")
@click.option("--image-dir", default=None, type=click.Path(file_okay=False))
@click.option("--image-pattern", default="{id}_T1.nii.gz", show_default=True)
@click.option("--labels-column", default=None)
@click.option("--labels-dir", default=None, type=click.Path(file_okay=False))
@click.option("--labels-pattern", default="{id}.nii.gz", show_default=True)
@click.option("--label-scheme", type=click.Choice(["muse", "diffdef"]), default="muse", show_default=True)
@click.option("--mask-column", default=None)
@click.option("--mask-dir", default=None, type=click.Path(file_okay=False))
@click.option("--mask-pattern", default="{id}.nii.gz", show_default=True)
@click.option("--age-column", default="age", show_default=True)
@click.option("--sex-column", default=None)
@click.option("--grid", type=click.Choice(["2mm", "paper", "4mm"]), default="2mm", show_default=True)
@click.option("--brain-extraction", type=click.Choice(["auto", "labels", "mask", "deepbet"]), default="auto",
              show_default=True, help="auto: the mask if given, else label > 0 if labels are given, else deepbet.")
@click.option("--test-fraction", type=float, default=0.2, show_default=True)
@click.option("--split-seed", type=int, default=0, show_default=True)
@click.option("--workers", type=int, default=1, show_default=True)
@click.option("--shard", default=None, help="K/N: only subjects K-1 mod N of the id-sorted table; no manifest.")
@click.option("--overwrite", is_flag=True, help="Delete results made with other settings and start again.")
@click.option("-v", "--verbose", is_flag=True)
def main(table, out_dir, merge_dir, id_column, image_column, image_dir, image_pattern, labels_column, labels_dir,
         labels_pattern, label_scheme, mask_column, mask_dir, mask_pattern, age_column, sex_column, grid,
         brain_extraction, test_fraction, split_seed, workers, shard, overwrite, verbose):
    """Prepare raw T1 scans listed in TABLE (CSV/TSV) into a template-aligned, QC-checked cohort in --out."""
    import logging

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(message)s",
                        stream=sys.stderr)
    from tqdm import tqdm

    from diffdef.prepare import run
    from diffdef.prepare.subject import Options
    from diffdef.prepare.table import FileSource, TableError, read_table

    try:
        if merge_dir:
            if table or out_dir:
                raise click.UsageError("--merge DIR takes no TABLE and no --out")
            handler = run.add_log_file(__import__("pathlib").Path(merge_dir))
            summary = run.merge(merge_dir)
            logging.getLogger("diffdef").removeHandler(handler)
        else:
            if not table or not out_dir:
                raise click.UsageError("give TABLE and --out DIR (or --merge DIR)")
            if bool(image_column) == bool(image_dir):
                raise click.UsageError("give exactly one of --image-column and --image-dir")
            if labels_column and labels_dir or mask_column and mask_dir:
                raise click.UsageError("give a column or a folder for labels/masks, not both")
            if workers < 1:
                raise click.UsageError("--workers must be >= 1")
            specs = read_table(
                table, id_column,
                image=FileSource(image_column, image_dir, image_pattern),
                labels=FileSource(labels_column, labels_dir, labels_pattern),
                mask=FileSource(mask_column, mask_dir, mask_pattern),
                age_column=age_column, sex_column=sex_column)
            options = Options(grid=grid, brain_extraction=brain_extraction, label_scheme=label_scheme,
                              test_fraction=test_fraction, split_seed=split_seed)
            bar = None

            def progress(record, total):
                nonlocal bar
                if record is None:
                    bar = tqdm(total=total, unit="subject", file=sys.stderr, disable=total == 0)
                    return
                bar.update(1)
                bar.set_postfix_str(f"{record['id']} {record['status']}")

            try:
                summary = run.prepare_cohort(specs, out_dir, options, workers=workers, shard=shard,
                                             overwrite=overwrite, progress=progress)
            finally:
                if bar is not None:
                    bar.close()
    except (TableError, run.PrepareError) as exc:
        raise click.ClickException(str(exc)) from None
    if summary is not None:
        click.echo(f"{summary['ok']} of {summary['subjects']} subjects passed QC "
                   f"({summary['failed']} in failures.csv)")


if __name__ == "__main__":
    main()
