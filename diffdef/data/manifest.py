"""Real data: a manifest CSV of template-aligned NIfTI images with condition columns -> a torch dataset.

A manifest is a CSV (or ``.tsv``) file with one row per subject: a column of image paths (``path`` by
default) and one column per condition (``age``, ``sex``, ventricle volume, ...). The images must already be
registered to the MNI152 template and resampled to one of the template grids (``diffdef_runtime.grid``):
this module checks that, it does not register anything.

Reading (:func:`read_manifest`):

- Relative image paths resolve against the CSV's folder (or ``root`` when given).
- A condition column is found by its exact name, else by a case-insensitive match (so ``age`` finds the IXI
  ``Age`` column). Condition values become floats. A condition called ``sex`` (any case) also accepts
  ``F``/``female`` -> 0 and ``M``/``male`` -> 1 (any case), and ``0``/``1``.
- Rows with an empty condition value (empty cell, ``NA``, ``N/A``, ``NaN``, ``None``, ``null``) are
  skipped, with exactly one :class:`ManifestWarning` per call that counts them and names the column(s) and
  the file. Any other value that is not a finite number is an error naming the file, the row and the column:
  a typo is never silently dropped.
- A missing CSV, a missing column, a manifest with no usable row and an image file that does not exist are
  errors too (checked for every usable row before training starts, not at item 3,000).
- With ``unique=True`` (training), two rows that list the same image, or the same subject id (a column ``id``,
  ``subject``, ``subject_id`` or ``participant_id``), are an error naming both rows: one scan listed 8 times
  would otherwise train as 8 subjects, and a subject in both splits leaks into the test set.

Loading (:class:`ManifestDataset`, :func:`load_grid_image`): nibabel loads the image and reorients it to
RAS with ``nib.as_closest_canonical`` (axis flips/permutations only, no resampling); its shape must then be
the grid's shape and its affine the grid's affine within 1e-3 mm, else a ``ValueError`` names the file, what
was expected and what was found. NaN/inf voxels are rejected.

Intensity normalisation (``normalise="percentile"``, the default): :func:`diffdef.data.intensity.to_template_scale`,
the convention every image the models see follows (the template's 99.5th percentile). ``normalise="none"``
returns the stored values unchanged (as float32).
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from torch.utils.data import Dataset

from diffdef.data.intensity import to_template_scale
from diffdef_runtime import atomic
from diffdef_runtime.conditions import parse_sex
from diffdef_runtime.grid import Grid, get_grid

__all__ = [
    "AFFINE_TOLERANCE_MM",
    "ManifestDataset",
    "ManifestError",
    "ManifestTable",
    "ManifestWarning",
    "NORMALISE_CHOICES",
    "load_grid_image",
    "normalise_intensities",
    "read_manifest",
    "write_manifest",
]

AFFINE_TOLERANCE_MM = 1e-3
"""Largest allowed absolute difference between an image's (RAS) affine and the grid's affine."""

NORMALISE_CHOICES = ("percentile", "none")

# Cell contents that mean "no value" (compared case-insensitively after stripping whitespace).
_MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "none", "null"})


class ManifestWarning(UserWarning):
    """Rows of a manifest were skipped (they have no value for a condition)."""


class ManifestError(ValueError):
    """A manifest (CSV) is malformed: missing column, non-number value, no usable row, ..."""


@dataclass
class ManifestTable:
    """The usable rows of a manifest.

    Attributes:
        rows: one dict per usable row: ``{"path": absolute image path (str), <condition>: float, ...}``;
            condition keys are the names asked for (e.g. ``"age"``), whatever the CSV's column spelling.
        skipped: how many data rows were skipped because a condition value was missing.
        conditions: the condition names, in the order asked for.
        csv_path: the manifest file (absolute).
        total: how many data rows the CSV had (usable + skipped, and rows of other splits).
        where: per usable row, ``(row number, line number)`` in the CSV (for error messages).
    """

    rows: list[dict[str, Any]]
    skipped: int = 0
    conditions: tuple[str, ...] = ("age",)
    csv_path: Path | None = None
    total: int = field(default=-1)
    where: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.total < 0:
            self.total = len(self.rows) + self.skipped  # lower bound when rows of other splits were left out

    def __len__(self) -> int:
        return len(self.rows)

    def paths(self) -> list[str]:
        """The image paths, in row order."""
        return [row["path"] for row in self.rows]

    def values(self, name: str) -> np.ndarray:
        """The values of condition ``name`` over all rows, float64 ``(N,)``."""
        if name not in self.conditions:
            raise KeyError(f"no condition {name!r}; this table has {list(self.conditions)}")
        return np.asarray([row[name] for row in self.rows], dtype=np.float64)


# --------------------------------------------------------------------------------------------- reading


def _find_column(fieldnames: Sequence[str], wanted: str, csv_path: Path, what: str) -> str:
    if wanted in fieldnames:
        return wanted
    folded = [name for name in fieldnames if name.strip().casefold() == wanted.strip().casefold()]
    if len(folded) == 1:
        return folded[0]
    present = ", ".join(repr(name) for name in fieldnames)
    if len(folded) > 1:
        raise ManifestError(
            f"{csv_path}: {what} column {wanted!r} matches several columns ({folded}) case-insensitively; "
            f"columns present: {present}"
        )
    raise ManifestError(f"{csv_path}: no {what} column {wanted!r}; columns present: {present}")


def _parse_condition(raw: str | None, name: str, column: str, csv_path: Path, row: int, line: int) -> float | None:
    """A cell -> float, or None when it is empty; ValueError (naming file/row/column) when it is not a number."""
    text = "" if raw is None else raw.strip()
    if text.casefold() in _MISSING_TOKENS:
        return None
    where = f"{csv_path}, row {row} (line {line}), column {column!r}"
    if name.strip().casefold() == "sex":
        try:
            return parse_sex(text)
        except ValueError as err:
            raise ManifestError(f"{where}: {err}") from None
    try:
        value = float(text)
    except ValueError:
        raise ManifestError(f"{where}: {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise ManifestError(f"{where}: {raw!r} is not a finite number")
    return value


def manifest_columns(csv_path: str | os.PathLike) -> list[str]:
    """The header of a manifest (CSV, or TSV by extension); a missing file is a ``FileNotFoundError``."""
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise FileNotFoundError(f"manifest not found: {csv_path}")
    delimiter = "\t" if csv_path.suffix.lower() == ".tsv" else ","
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        return next(csv.reader(handle, delimiter=delimiter), [])


def read_manifest(
    csv_path: str | os.PathLike,
    conditions: Sequence[str] = ("age",),
    image_column: str = "path",
    root: str | os.PathLike | None = None,
    check_files: bool = True,
    split: str | None = None,
    path_columns: Sequence[str] = (),
    unique: bool = False,
) -> ManifestTable:
    """Read a manifest CSV into a :class:`ManifestTable`.

    Args:
        csv_path: the manifest; comma-separated (tab-separated when the name ends in ``.tsv``), first line a
            header, UTF-8 (a byte-order mark is fine).
        conditions: names of the condition columns (matched exactly, else case-insensitively).
        image_column: name of the column of image paths.
        root: folder that relative image paths are relative to; default the CSV's folder.
        check_files: check that every usable row's image file exists (default True).
        split: keep only the rows whose ``split`` column (written by ``diffdef-prepare``: ``train`` / ``test``)
            has this value; the column must exist. ``None`` keeps every row.
        path_columns: other columns of file paths (e.g. ``labels``) to return, resolved like the image paths and
            keyed by the column name; an empty cell gives ``None``.
        unique: two rows (of any split) with the same image path or subject id are an error naming both.

    Returns:
        The usable rows, with absolute image paths and float condition values.

    Raises:
        FileNotFoundError: the CSV, or an image file of a usable row, does not exist.
        ManifestError (a ValueError): empty file, missing column, a condition value that is not a number, an
            empty image path, or no usable row.

    Warns:
        ManifestWarning: once, when rows were skipped for lack of a condition value.
    """
    if isinstance(conditions, str):
        conditions = (conditions,)
    conditions = tuple(conditions)
    if not conditions:
        raise ValueError("at least one condition column is needed")
    if len(set(conditions)) != len(conditions):
        raise ValueError(f"conditions repeat a name: {list(conditions)}")
    if image_column in conditions:
        raise ValueError(f"{image_column!r} cannot be both the image column and a condition")

    csv_path = Path(csv_path).expanduser().absolute()
    if not csv_path.is_file():
        raise FileNotFoundError(f"manifest not found: {csv_path}")
    base = Path(root).expanduser().absolute() if root is not None else csv_path.parent

    delimiter = "\t" if csv_path.suffix.lower() == ".tsv" else ","
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        fieldnames = [name for name in (reader.fieldnames or [])]
        if not fieldnames:
            raise ManifestError(f"{csv_path}: the file is empty (no header line)")
        path_col = _find_column(fieldnames, image_column, csv_path, "image")
        cond_cols = {name: _find_column(fieldnames, name, csv_path, "condition") for name in conditions}
        split_col = _find_column(fieldnames, "split", csv_path, "split") if split is not None else None
        extra_cols = {name: _find_column(fieldnames, name, csv_path, "path") for name in path_columns}
        id_col = next((c for c in fieldnames if c.strip().casefold() in ID_COLUMNS), None) if unique else None
        seen: dict[tuple[str, str], tuple[int, int]] = {}
        where: list[tuple[int, int]] = []

        rows: list[dict[str, Any]] = []
        missing_per_column: dict[str, int] = {}
        total = skipped = 0
        for record in reader:
            total += 1
            line = reader.line_num
            if unique:
                _check_unique(record, path_col, id_col, base, seen, (total, line), csv_path)
            if split_col is not None and (record.get(split_col) or "").strip() != split:
                continue
            values: dict[str, float] = {}
            missing: list[str] = []
            for name, column in cond_cols.items():
                value = _parse_condition(record.get(column), name, column, csv_path, total, line)
                if value is None:
                    missing.append(column)
                else:
                    values[name] = value
            if missing:
                skipped += 1
                for column in missing:
                    missing_per_column[column] = missing_per_column.get(column, 0) + 1
                continue
            raw_path = (record.get(path_col) or "").strip()
            if not raw_path:
                raise ManifestError(f"{csv_path}, row {total} (line {line}): empty image path in column {path_col!r}")
            image = Path(raw_path).expanduser()
            if not image.is_absolute():
                image = base / image
            image = Path(os.path.normpath(image))
            if check_files and not image.is_file():
                raise FileNotFoundError(
                    f"image file not found: {image} (row {total} (line {line}) of {csv_path}, "
                    f"column {path_col!r} = {raw_path!r})"
                )
            extra = {name: _resolve(record.get(column), base) for name, column in extra_cols.items()}
            rows.append({"path": str(image), **values, **extra})
            where.append((total, line))

    if not rows:
        reason = ""
        if total == 0:
            reason = "it has a header but no data rows"
        elif split is not None and not missing_per_column:
            reason = f"no row has split {split!r}"
        else:
            reason = f"all {total} rows lack a value for " + _describe_missing(missing_per_column)
        raise ManifestError(f"{csv_path}: no usable rows ({reason})")
    if skipped:
        warnings.warn(
            f"skipped {skipped} of {total} rows of {csv_path.name} with no value for "
            f"{_describe_missing(missing_per_column)} ({csv_path})",
            ManifestWarning,
            stacklevel=2,
        )
    return ManifestTable(rows=rows, skipped=skipped, conditions=conditions, csv_path=csv_path, total=total,
                         where=where)


ID_COLUMNS = ("id", "subject", "subject_id", "participant_id")


def _check_unique(record: Mapping[str, str | None], path_col: str, id_col: str | None, base: Path,
                  seen: dict[tuple[str, str], tuple[int, int]], here: tuple[int, int], csv_path: Path) -> None:
    """ManifestError naming both rows when this row repeats an earlier row's image or subject id."""
    keys = []
    raw_path = (record.get(path_col) or "").strip()
    if raw_path:
        keys.append((path_col, _resolve(raw_path, base)))
    subject = (record.get(id_col) or "").strip() if id_col is not None else ""
    if subject:
        keys.append((id_col, subject))
    for column, value in keys:
        if (column, value) in seen:
            (row, line), (row2, line2) = seen[(column, value)], here
            what = "image" if column == path_col else "subject id"
            raise ManifestError(f"{csv_path}: rows {row} (line {line}) and {row2} (line {line2}) have the same {what} "
                                f"{value!r} in column {column!r}; list each subject once")
        seen[(column, value)] = here


def _resolve(raw: str | None, base: Path) -> str | None:
    text = (raw or "").strip()
    if not text:
        return None
    path = Path(text).expanduser()
    return os.path.normpath(path if path.is_absolute() else base / path)


def _describe_missing(missing_per_column: Mapping[str, int]) -> str:
    if len(missing_per_column) == 1:
        return repr(next(iter(missing_per_column)))
    return ", ".join(f"{column!r} ({count})" for column, count in missing_per_column.items())


# --------------------------------------------------------------------------------------------- writing


def write_manifest(
    csv_path: str | os.PathLike,
    rows: Iterable[Mapping[str, Any]] | ManifestTable,
    columns: Sequence[str] | None = None,
) -> Path:
    """Write ``rows`` (dicts, or a :class:`ManifestTable`) as a CSV, atomically.

    The file is written to a temporary file in the same folder, flushed to disk and moved over ``csv_path``
    with ``os.replace``, so a reader never sees half a manifest. Columns are ``columns`` when given, else
    every key in order of first appearance; a key missing from a row (or ``None``) writes an empty cell.
    Floats are written with ``repr`` (they read back exactly). Returns the path written.
    """
    if isinstance(rows, ManifestTable):
        rows = rows.rows
    rows = [dict(row) for row in rows]
    if columns is None:
        seen: dict[str, None] = {}
        for row in rows:
            for key in row:
                seen.setdefault(str(key), None)
        columns = list(seen)
    columns = list(columns)
    if not columns:
        raise ValueError("nothing to write: no columns")

    csv_path = Path(csv_path).expanduser().absolute()
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    delimiter = "\t" if csv_path.suffix.lower() == ".tsv" else ","
    with atomic.atomic_path(csv_path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, delimiter=delimiter)
            writer.writerow(columns)
            for row in rows:
                writer.writerow([_format_cell(row.get(column)) for column in columns])
    return csv_path


def _format_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


# --------------------------------------------------------------------------------------------- loading


def normalise_intensities(data: np.ndarray, grid: str | Grid, method: str = "percentile",
                          name: str = "image") -> np.ndarray:
    """``to_template_scale`` (``method="percentile"``) or the data unchanged (``"none"``); ``name`` is used in errors."""
    if method == "none":
        return data
    if method != "percentile":
        raise ValueError(f"unknown normalise {method!r}; choose one of {list(NORMALISE_CHOICES)}")
    return to_template_scale(data, grid, name=name)


def load_grid_image(path: str | os.PathLike, grid: str | Grid, normalise: str = "percentile") -> np.ndarray:
    """Load a template-aligned NIfTI as a float32 ``(D, H, W)`` array in RAS voxel order of ``grid``.

    The image is reoriented with ``nib.as_closest_canonical``; its shape must then equal ``grid.shape`` and
    its affine ``grid.affine`` (within :data:`AFFINE_TOLERANCE_MM`). A trailing singleton 4th axis is
    dropped. NaN/inf voxels are an error. See the module docstring for ``normalise``.
    """
    grid = get_grid(grid)
    if normalise not in NORMALISE_CHOICES:
        raise ValueError(f"unknown normalise {normalise!r}; choose one of {list(NORMALISE_CHOICES)}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    hint = f"register it to the MNI152 template and resample to the {grid.name!r} grid first"
    try:
        image = nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for unreadable files
        raise ValueError(f"{path}: cannot read as a NIfTI image ({exc})") from exc
    if len(image.shape) == 4 and image.shape[3] == 1:
        image = image.slicer[..., 0]
    if len(image.shape) != 3:
        raise ValueError(f"{path}: expected a 3-D image of shape {grid.shape}, found shape {image.shape}; {hint}")
    image = nib.as_closest_canonical(image)
    shape = tuple(int(s) for s in image.shape)
    if shape != tuple(grid.shape):
        raise ValueError(
            f"{path}: expected shape {tuple(grid.shape)} of the {grid.name!r} grid (after reorientation to RAS), "
            f"found {shape}; {hint}"
        )
    affine = np.asarray(image.affine, dtype=np.float64)
    error = float(np.max(np.abs(affine - grid.affine)))
    if not error <= AFFINE_TOLERANCE_MM:
        raise ValueError(
            f"{path}: affine does not match the {grid.name!r} grid (largest difference {error:.4g} mm, "
            f"tolerance {AFFINE_TOLERANCE_MM} mm after reorientation to RAS);\n"
            f"expected\n{np.array2string(grid.affine, precision=4, suppress_small=True)}\n"
            f"found\n{np.array2string(affine, precision=4, suppress_small=True)}\n{hint}"
        )
    data = np.asarray(image.get_fdata(dtype=np.float32), dtype=np.float32)
    finite = np.isfinite(data)
    if not finite.all():
        bad = int(data.size - np.count_nonzero(finite))
        raise ValueError(f"{path}: {bad} voxel(s) are NaN or infinite; fix or mask the image first")
    data = normalise_intensities(np.ascontiguousarray(data), grid, normalise, name=str(path))
    return np.ascontiguousarray(data, dtype=np.float32)


class ManifestDataset(Dataset):
    """A torch dataset over a :class:`ManifestTable` (or a manifest CSV path).

    ``dataset[i]`` is ``{"image": float32 tensor (1, D, H, W), "conditions": {name: float}, "path": str}``
    (after ``transform``, if given: a callable taking and returning that dict, e.g. MONAI dictionary
    transforms). With the default ``torch.utils.data`` collate a batch has ``image`` ``(N, 1, D, H, W)``,
    ``conditions[name]`` a float64 tensor ``(N,)`` (raw, not normalised to [0, 1]) and ``path`` a list.

    Args:
        table: a :class:`ManifestTable`, or a path to a manifest CSV (read with ``read_manifest`` and
            ``conditions``).
        grid: the template grid name (``"paper"``, ``"2mm"``, ``"4mm"``) or a ``Grid``.
        normalise: ``"percentile"`` (default) or ``"none"``; see the module docstring.
        cache: keep loaded (normalised) images in memory; each DataLoader worker has its own cache. Items are
            returned as copies, so in-place augmentation never corrupts the cache.
        transform: optional callable applied to each item dict.
        conditions: condition names, only used when ``table`` is a path.
    """

    def __init__(
        self,
        table: ManifestTable | str | os.PathLike,
        grid: str | Grid,
        normalise: str = "percentile",
        cache: bool = False,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        conditions: Sequence[str] = ("age",),
    ) -> None:
        if not isinstance(table, ManifestTable):
            table = read_manifest(table, conditions=conditions)
        if normalise not in NORMALISE_CHOICES:
            raise ValueError(f"unknown normalise {normalise!r}; choose one of {list(NORMALISE_CHOICES)}")
        self.table = table
        self.grid = get_grid(grid)
        self.normalise = normalise
        self.cache = bool(cache)
        self.transform = transform
        self._cache: dict[int, np.ndarray] = {}

    @property
    def conditions(self) -> tuple[str, ...]:
        return tuple(self.table.conditions)

    def __len__(self) -> int:
        return len(self.table.rows)

    def load_image(self, index: int) -> np.ndarray:
        """The normalised ``(D, H, W)`` float32 array of row ``index`` (from the cache when enabled)."""
        if self.cache and index in self._cache:
            return self._cache[index]
        data = load_grid_image(self.table.rows[index]["path"], self.grid, self.normalise)
        if self.cache:
            self._cache[index] = data
        return data

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
        row = self.table.rows[index]
        data = self.load_image(index)
        image = torch.from_numpy(data.copy() if self.cache else data).unsqueeze(0)
        item: dict[str, Any] = {
            "image": image,
            "conditions": {name: float(row[name]) for name in self.table.conditions},
            "path": row["path"],
        }
        if self.transform is not None:
            item = self.transform(item)
        return item
