"""Training images and their condition vectors, from the synthetic cohort or a real-data manifest.

Both routes put every image on the template's intensity scale with the same function
(``diffdef.data.intensity.to_template_scale``), so a model trained on one reads the other's images the same way.
The synthetic cohort is generated in memory, or read from what ``diffdef-synth`` wrote (``data.synthetic_dir``:
the same images and conditions, bit for bit, without generating them again).
Everything is held in memory as one tensor: the 2 mm cohort of 200 subjects is 0.6 GB in float32.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from diffdef_runtime.conditions import CONDITION_RANGES, ConditionSpec
from diffdef_runtime.grid import Grid, get_grid

log = logging.getLogger(__name__)


@dataclass
class TrainingData:
    """Attributes:
    images: (M, 1, D, H, W) float32 on the CPU, intensities ~[0, 1].
    conditions: (M, K) float32, normalised to [0, 1] by ``spec``.
    raw_conditions: (M, K) float64 in natural units (years, 0 = F / 1 = M, mL).
    spec: names, normalisation ranges and trained ranges of the conditions.
    grid: the template grid the images live on.
    labels: (M, D, H, W) int16 label maps (ids of ``label_scheme``), when the manifest has a labels column.
    """

    images: torch.Tensor
    conditions: torch.Tensor
    raw_conditions: np.ndarray
    spec: ConditionSpec
    grid: Grid
    labels: torch.Tensor | None = None
    label_scheme: str = "diffdef"

    def __len__(self) -> int:
        return self.images.shape[0]


def _spec(names: list[str], raw: np.ndarray, ranges: dict[str, tuple[float, float]]) -> ConditionSpec:
    trained = {name: (float(raw[:, k].min()), float(raw[:, k].max())) for k, name in enumerate(names)}
    return ConditionSpec(names=tuple(names), ranges={n: ranges[n] for n in names}, trained=trained)


def _synthetic(data_cfg: dict[str, Any], grid: Grid, show_progress: bool) -> tuple[torch.Tensor, np.ndarray]:
    from diffdef.data.intensity import to_template_scale

    n = int(data_cfg["n_subjects"])
    if data_cfg.get("synthetic_dir"):
        subjects = _written_cohort(data_cfg["synthetic_dir"], n, int(data_cfg["synthetic_seed"]), grid)
    else:
        from diffdef.synth.cohort import SyntheticCohort

        cohort = SyntheticCohort(grid=grid.name, seed=int(data_cfg["synthetic_seed"]))
        subjects = ((s.image[0, 0].float().numpy(), s.age, s.sex, s.ventricle_volume_ml)
                    for s in (cohort.subject(i) for i in range(n)))
    images = torch.empty((n, 1, *grid.shape), dtype=torch.float32)
    raw = np.empty((n, len(data_cfg["conditions"])), dtype=np.float64)
    bar = tqdm(subjects, total=n, desc="synthetic cohort", disable=not show_progress, dynamic_ncols=True)
    for i, (image, age, sex, ventricles) in enumerate(bar):
        images[i, 0] = torch.from_numpy(to_template_scale(image, grid, f"synthetic subject {i}"))
        values = {"age": age, "sex": 1.0 if sex == "M" else 0.0, "ventricle_volume_ml": ventricles}
        raw[i] = [values[name] for name in data_cfg["conditions"]]
    return images, raw


def _written_cohort(folder: str, n: int, seed: int, grid: Grid):
    """Subjects 0 .. n - 1 of the cohort ``diffdef-synth`` wrote into ``folder`` (its manifest.csv), as
    ``(image (D, H, W) float32, age, sex, ventricle mL)``; errors name the folder and what does not match."""
    import csv

    import nibabel as nib

    path = Path(folder) / "manifest.csv"
    if not path.is_file():
        raise ValueError(f"data.synthetic_dir {folder}: no manifest.csv (write the cohort with `diffdef-synth --n {n} "
                         f"--grid {grid.name} --seed {seed} --out {folder}`)")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = {row["subject"]: row for row in csv.DictReader(handle)}
    for i in range(n):
        row = rows.get(f"sub-{i:04d}")
        if row is None or int(row["seed"]) != seed:
            raise ValueError(f"data.synthetic_dir {folder}: subject sub-{i:04d} of cohort seed {seed} is missing "
                             f"({len(rows)} subjects there, seed {next(iter(rows.values()))['seed'] if rows else '-'}); "
                             f"write {n} with `diffdef-synth --n {n} --grid {grid.name} --seed {seed}`")
        image = np.asarray(nib.load(str(Path(folder) / row["path"])).dataobj, dtype=np.float32)
        if image.shape != tuple(grid.shape):
            raise ValueError(f"data.synthetic_dir {folder}: {row['path']} has shape {image.shape}, the {grid.name} "
                             f"grid is {tuple(grid.shape)}")
        yield image, float(row["age"]), row["sex"], float(row["ventricle_volume_ml"])


def _manifest(data_cfg: dict[str, Any], grid: Grid) -> tuple[torch.Tensor, np.ndarray, torch.Tensor | None]:
    from diffdef.data import ManifestDataset, read_manifest
    from diffdef.data.manifest import manifest_columns

    if not data_cfg.get("manifest"):
        raise ValueError("data.source is 'manifest' but data.manifest (a CSV path) is not set")
    names = tuple(data_cfg["conditions"])
    split = data_cfg["split"]
    columns = {c.strip().casefold() for c in manifest_columns(data_cfg["manifest"])}
    if split is not None and "split" not in columns:
        log.warning("%s has no split column: every row trains (diffdef-prepare writes one that keeps a held-out "
                    "test set apart)", data_cfg["manifest"])
        split = None
    has_labels = "labels" in columns
    table = read_manifest(data_cfg["manifest"], conditions=names, image_column=data_cfg["image_column"],
                          split=split, path_columns=("labels",) if has_labels else (), unique=True)
    log.info("manifest %s: %d subjects%s", data_cfg["manifest"], len(table),
             f" of split {split!r}" if split is not None else "")
    dataset = ManifestDataset(table, grid)
    images = torch.stack([_row(table, i, data_cfg["image_column"], lambda i=i: dataset[i]["image"])
                          for i in range(len(dataset))])
    raw = np.stack([table.values(name) for name in names], axis=1).astype(np.float64)
    labels = None
    if has_labels and all(row["labels"] for row in table.rows):
        from diffdef.evaluate.cohort import load_labels

        labels = torch.stack([_row(table, i, "labels", lambda i=i: torch.from_numpy(
            load_labels(table.rows[i]["labels"], grid).astype(np.int16))) for i in range(len(table))])
    return images, raw, labels


def _row(table, index: int, column: str, load):
    """``load()``, with a failure (missing file, NaN voxels, wrong grid) re-raised as a one-line ManifestError
    naming the manifest, the row, its line and the column."""
    from diffdef.data.manifest import ManifestError

    try:
        return load()
    except (ValueError, OSError) as err:
        row, line = table.where[index]
        first = str(err).splitlines()[0].rstrip(";") if str(err) else type(err).__name__
        raise ManifestError(f"{table.csv_path}, row {row} (line {line}), column {column!r}: {first}") from err


def load_training_data(data_cfg: dict[str, Any], show_progress: bool = True) -> TrainingData:
    """Build the in-memory training set described by the ``data`` section of a training config."""
    grid = get_grid(data_cfg["grid"])
    names = list(data_cfg["conditions"])
    unknown = set(names) - set(CONDITION_RANGES)
    if unknown or not names:
        raise ValueError(f"data.conditions must be a non-empty subset of {sorted(CONDITION_RANGES)}; got {names}")
    source = data_cfg["source"]
    if source == "synthetic":
        images, raw = _synthetic(data_cfg, grid, show_progress)
        labels = None
        ranges = CONDITION_RANGES
    elif source == "manifest":
        images, raw, labels = _manifest(data_cfg, grid)
        # Real data: normalise by the observed range (sex is always 0..1).
        ranges = {n: ((0.0, 1.0) if n == "sex" else (float(raw[:, k].min()), float(raw[:, k].max())))
                  for k, n in enumerate(names)}
    else:
        raise ValueError(f"data.source must be 'synthetic' or 'manifest', got {source!r}")
    spec = _spec(names, raw, ranges)
    conditions = torch.from_numpy(spec.normalise({n: raw[:, k] for k, n in enumerate(names)}))
    log.info("training data: %d images on the %s grid, conditions %s", len(images), grid.name, names)
    return TrainingData(images=images, conditions=conditions, raw_conditions=raw, spec=spec, grid=grid,
                        labels=labels, label_scheme=data_cfg["label_scheme"])


def sample_indices(n_items: int, batch: int, generator: torch.Generator) -> torch.Tensor:
    """``batch`` indices drawn uniformly with replacement: (batch,) int64."""
    return torch.randint(0, n_items, (batch,), generator=generator)


def neighbour_weights(conditions: torch.Tensor, target: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian weights of every training subject around a target condition (DESIGN.md, L_morph).

    Args:
        conditions: (M, K) normalised; target: (K,) normalised; sigma: width on the normalised scale.
    Returns:
        (M,) weights summing to 1.
    """
    d2 = ((conditions - target.unsqueeze(0)) ** 2).sum(1)
    logits = -d2 / (2 * sigma**2)
    return torch.softmax(logits, 0)


def draw_neighbours(conditions: torch.Tensor, target: torch.Tensor, sigma: float, n: int,
                    generator: torch.Generator) -> torch.Tensor:
    """``n`` training indices drawn with replacement by :func:`neighbour_weights` around ``target``.

    Args:
        conditions: (M, K) normalised; target: (K,) normalised; sigma: width on the normalised scale.
    Returns:
        (n,) int64 on the CPU.
    """
    weights = neighbour_weights(conditions, target, sigma).cpu()
    return torch.multinomial(weights, int(n), replacement=True, generator=generator)
