"""The prepared cohort: a ``diffdef-prepare`` manifest read into subjects with images, label maps and conditions.

Columns used: ``path`` (template-aligned skull-stripped T1 on a template grid), ``labels`` (its label map on
the same grid, original ids), ``split`` (``train``/``test``), ``id`` (optional; default the row number), ``age``
and every condition the model needs (``sex`` as F/M or 0/1, parsed by the runtime's one condition parser,
``ConditionSpec.raw_values``: 0 = F, 1 = M). Relative paths resolve against the CSV's folder. A missing column is
an error naming it; a row with an empty value of a needed condition (or of age) is skipped with one warning.
Images load with :func:`diffdef.data.manifest.load_grid_image` (grid and affine checked, the project's intensity
convention); label maps with nibabel (``as_closest_canonical``, integer, the same grid checks).
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from diffdef.data.manifest import AFFINE_TOLERANCE_MM, ManifestError, ManifestWarning, load_grid_image
from diffdef.data.tissues import TISSUES, tissue_masks
from diffdef_runtime.grid import Grid, get_grid

_MISSING = frozenset({"", "na", "n/a", "nan", "none", "null"})
SPLITS = ("train", "test")


@dataclass
class Subject:
    """One prepared subject. ``conditions``: name -> float as the model takes them (sex 0 = F, 1 = M)."""

    id: str
    image_path: str
    labels_path: str
    age: float
    split: str
    conditions: dict[str, float] = field(default_factory=dict)
    image: np.ndarray | None = None  # (D, H, W) float32, template scale
    labels: np.ndarray | None = None  # (D, H, W) integer ids

    def masks(self, scheme: str) -> dict[str, np.ndarray]:
        """Bool class masks of the subject's labels (:data:`diffdef.data.tissues.TISSUES` + ``brain``)."""
        if self.labels is None:
            raise RuntimeError(f"subject {self.id}: labels not loaded")
        return tissue_masks(self.labels, scheme)


def _column(fieldnames: Sequence[str], wanted: str, csv_path: Path, what: str) -> str:
    if wanted in fieldnames:
        return wanted
    folded = [n for n in fieldnames if n.strip().casefold() == wanted.casefold()]
    if len(folded) == 1:
        return folded[0]
    raise ManifestError(f"{csv_path}: no {what} column {wanted!r} (columns present: {', '.join(fieldnames)})")


def read_cohort(csv_path: str | os.PathLike, conditions: Sequence[str] = ("age",), condition_spec=None,
                load: bool = True, grid: str | Grid | None = None) -> list[Subject]:
    """Read the manifest's usable rows as :class:`Subject` (images and labels loaded when ``load``).

    Args:
        conditions: condition names the model needs (each must be a column: error naming it otherwise).
        condition_spec: the model's ``ConditionSpec``; when given, its ``raw_values`` parses the conditions (the
            one sex parser); otherwise sex is parsed the same way by a spec-free path (F/M/0/1).
        grid: the template grid the images must be on (checked when loading).
    """
    csv_path = Path(csv_path).expanduser().absolute()
    if not csv_path.is_file():
        raise FileNotFoundError(f"manifest not found: {csv_path}")
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle, delimiter="\t" if csv_path.suffix.lower() == ".tsv" else ",")
        names = list(reader.fieldnames or [])
        if not names:
            raise ManifestError(f"{csv_path}: empty file (no header)")
        path_col = _column(names, "path", csv_path, "image")
        labels_col = _column(names, "labels", csv_path, "label map")
        split_col = _column(names, "split", csv_path, "split")
        needed = tuple(dict.fromkeys(("age", *conditions)))
        cond_cols = {n: _column(names, n, csv_path, "condition (the model needs it)") for n in needed}
        id_col = next((n for n in names if n.strip().casefold() == "id"), None)
        records = list(reader)

    subjects: list[Subject] = []
    skipped: dict[str, int] = {}
    for row_no, record in enumerate(records, 1):
        raw = {n: (record.get(c) or "").strip() for n, c in cond_cols.items()}
        empty = [cond_cols[n] for n, v in raw.items() if v.casefold() in _MISSING]
        if empty:
            for c in empty:
                skipped[c] = skipped.get(c, 0) + 1
            continue
        where = f"{csv_path}, row {row_no}"
        try:
            if condition_spec is not None:
                model_values = condition_spec.raw_values({n: [raw[n]] for n in condition_spec.names})[0]
                values = dict(zip(condition_spec.names, map(float, model_values)))
            else:
                from diffdef_runtime.conditions import ConditionSpec

                spec = ConditionSpec(names=tuple(n for n in needed), ranges={n: (0.0, 1.0) for n in needed})
                values = dict(zip(spec.names, map(float, spec.raw_values({n: [raw[n]] for n in needed})[0])))
            age = float(raw["age"])
        except ValueError as err:
            raise ManifestError(f"{where}: {err}") from None
        if not math.isfinite(age):
            raise ManifestError(f"{where}: age {raw['age']!r} is not a finite number")
        split = (record.get(split_col) or "").strip().lower()
        if split not in SPLITS:
            raise ManifestError(f"{where}: split {record.get(split_col)!r} is not one of {SPLITS}")
        paths = []
        for col in (path_col, labels_col):
            text = (record.get(col) or "").strip()
            if not text:
                raise ManifestError(f"{where}: empty {col!r}")
            p = Path(text).expanduser()
            p = p if p.is_absolute() else csv_path.parent / p
            if not p.is_file():
                raise FileNotFoundError(f"{where}: {col!r} file not found: {p}")
            paths.append(str(Path(os.path.normpath(p))))
        sid = (record.get(id_col) or "").strip() if id_col else ""
        subjects.append(Subject(id=sid or f"row{row_no}", image_path=paths[0], labels_path=paths[1], age=age,
                                split=split, conditions=values))
    if skipped:
        warnings.warn(f"{csv_path}: skipped {sum(skipped.values())} row(s) with an empty value "
                      f"({', '.join(f'{c}: {k}' for c, k in skipped.items())})", ManifestWarning, stacklevel=2)
    if not subjects:
        raise ManifestError(f"{csv_path}: no usable row")
    if load:
        if grid is None:
            raise ValueError("loading needs the template grid")
        for s in subjects:
            load_subject(s, grid)
    return subjects


def load_labels(path: str | os.PathLike, grid: str | Grid) -> np.ndarray:
    """A label map on ``grid`` (RAS, shape and affine checked), integer ids."""
    grid = get_grid(grid)
    img = nib.as_closest_canonical(nib.load(str(path)))
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if tuple(data.shape) != tuple(grid.shape):
        raise ValueError(f"{path}: label map shape {data.shape}, expected the {grid.name} grid {grid.shape}")
    if not np.allclose(img.affine, grid.affine, atol=AFFINE_TOLERANCE_MM):
        raise ValueError(f"{path}: label map affine differs from the {grid.name} grid's:\n{img.affine}")
    rounded = np.rint(data)
    if not np.array_equal(rounded, data):
        raise ValueError(f"{path}: label map holds non-integer values")
    return rounded.astype(np.int32)


def load_subject(subject: Subject, grid: str | Grid) -> Subject:
    subject.image = load_grid_image(subject.image_path, grid)
    subject.labels = load_labels(subject.labels_path, grid)
    return subject


def split(subjects: Sequence[Subject], name: str) -> list[Subject]:
    return [s for s in subjects if s.split == name]


def decade(age: float) -> int:
    """The age bin: 20 for 20-29.99, 30 for 30-39.99, ..."""
    return int(math.floor(age / 10.0) * 10)


def decade_label(bin_start: int) -> str:
    return f"{bin_start}s"


__all__ = ["SPLITS", "Subject", "TISSUES", "decade", "decade_label", "load_labels", "load_subject",
           "read_cohort", "split"]
