"""``diffdef-synth``: write a synthetic ageing cohort (and its ground-truth atlases) as NIfTI + a manifest.

Layout under ``--out DIR``::

    DIR/subjects/sub-0000_T1w.nii.gz      float32 image
    DIR/subjects/sub-0000_labels.nii.gz   uint8 labels (0 bg, 1 CSF, 2 GM, 3 WM, 4 lateral ventricles)
    DIR/manifest.csv                      path, labels_path, age, sex, ventricle_volume_ml, subject, seed
    DIR/atlases/atlas_age-70_T1w.nii.gz   ground-truth atlas (+ _labels), one per --atlas-ages entry

Every file carries the grid's affine (``diffdef_runtime.nifti``) and is written atomically (temporary file in the same folder, then
``os.replace``). Heavy imports happen inside the command so that ``--help`` is instant.
"""

from __future__ import annotations

import os

import click

MANIFEST_COLUMNS = ("path", "labels_path", "age", "sex", "ventricle_volume_ml", "subject", "seed")


def _parse_ages(ctx, param, value: str) -> tuple[float, ...]:
    if value is None or value.strip() == "":
        return ()
    try:
        ages = tuple(float(a) for a in value.split(",") if a.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated ages such as 30,50,70,85; got {value!r}") from None
    bad = [a for a in ages if not 20.0 <= a <= 90.0]
    if bad:
        raise click.BadParameter(f"ages {bad} are outside the modelled range 20-90")
    return ages


def _age_tag(age: float) -> str:
    return f"{age:g}".replace(".", "p")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--n", "n", type=click.IntRange(min=1), required=True, help="Number of subjects (>= 1).")
@click.option("--grid", default="2mm", show_default=True, type=click.Choice(["paper", "1mm", "2mm", "4mm"]),
              help="Template grid: paper (= 1mm, 160x224x160), 2mm or 4mm.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, writable=True),
              help="Output folder (created).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Cohort seed.")
@click.option("--atlas-ages", default="30,50,70,85", show_default=True, callback=_parse_ages,
              help="Comma-separated ages of the ground-truth atlases to write ('' for none).")
@click.option("--threads", default=None, type=click.IntRange(min=1),
              help="torch CPU threads (default: torch's choice; 1 is faster on a busy machine).")
def main(n: int, grid: str, out: str, seed: int, atlas_ages: tuple[float, ...], threads: int | None) -> None:
    """Generate a synthetic ageing cohort with known ground-truth atlases."""
    import logging

    import torch
    from tqdm import tqdm

    from diffdef.data.manifest import write_manifest
    from diffdef.synth.cohort import SyntheticCohort
    from diffdef_runtime.nifti import save_nifti

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if threads is not None:
        torch.set_num_threads(threads)
    cohort = SyntheticCohort(grid=grid, seed=seed)
    affine = cohort.grid.affine
    sub_dir = os.path.join(out, "subjects")
    os.makedirs(sub_dir, exist_ok=True)
    rows = []
    for subject in tqdm(cohort.subjects(n), total=n, desc=f"subjects ({cohort.grid.name})", unit="sub"):
        stem = f"sub-{subject.index:04d}"
        image_rel = f"subjects/{stem}_T1w.nii.gz"
        labels_rel = f"subjects/{stem}_labels.nii.gz"
        save_nifti(subject.image[0, 0].numpy().astype("float32"), affine, os.path.join(out, image_rel))
        save_nifti(subject.labels[0, 0].numpy().astype("uint8"), affine, os.path.join(out, labels_rel))
        rows.append(dict(path=image_rel, labels_path=labels_rel, age=subject.age, sex=subject.sex,  # exact (repr)
                         ventricle_volume_ml=subject.ventricle_volume_ml, subject=stem, seed=seed))
    write_manifest(os.path.join(out, "manifest.csv"), rows, columns=MANIFEST_COLUMNS)
    for age in tqdm(atlas_ages, desc="atlases", unit="atlas", disable=not atlas_ages):
        atlas = cohort.ground_truth_atlas(age)
        stem = os.path.join(out, "atlases", f"atlas_age-{_age_tag(age)}")
        save_nifti(atlas.t1[0, 0].numpy().astype("float32"), affine, f"{stem}_T1w.nii.gz")
        save_nifti(atlas.labels[0, 0].numpy().astype("uint8"), affine, f"{stem}_labels.nii.gz")
        logging.getLogger(__name__).info("atlas age %g: ventricles %.1f mL", age, atlas.ventricle_volume_ml)
    click.echo(f"wrote {n} subjects, {len(atlas_ages)} atlases and {os.path.join(out, 'manifest.csv')}")


if __name__ == "__main__":  # pragma: no cover
    main()
