"""The participants table (CSV or TSV) -> one :class:`SubjectSpec` per row (files resolved, values kept raw).

Column names are matched exactly, else case-insensitively (``--id-column MRID`` finds ``mrid``). Problems
with the whole table (no such column, duplicate ids, no rows) raise :class:`TableError`; a problem with one
row (an empty age, a missing file) is left for the subject step, which reports it per subject.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from diffdef_runtime.conditions import parse_sex

_MISSING = frozenset({"", "na", "n/a", "nan", "none", "null"})


class TableError(ValueError):
    """The participants table cannot be used (missing column, duplicate id, empty table, ...)."""


@dataclass(frozen=True)
class FileSource:
    """Where one kind of file comes from: a table column (paths relative to the table) or a folder + pattern."""

    column: str | None = None
    folder: str | None = None
    pattern: str | None = None

    @property
    def given(self) -> bool:
        return bool(self.column or self.folder)


@dataclass(frozen=True)
class SubjectSpec:
    """One row: the subject's id, its input files (absolute paths or None) and its raw table values."""

    id: str
    image: str | None
    labels: str | None = None
    mask: str | None = None
    age_raw: str = ""
    sex_raw: str = ""

    def age(self) -> float | None:
        """The age as a float, or None when the cell is empty or not a finite number."""
        text = self.age_raw.strip()
        if text.casefold() in _MISSING:
            return None
        try:
            value = float(text)
        except ValueError:
            return None
        return value if math.isfinite(value) else None

    def sex(self) -> str | None:
        """``"F"``/``"M"``, None when empty; ValueError for anything else."""
        if self.sex_raw.strip().casefold() in _MISSING:
            return None
        return "F" if parse_sex(self.sex_raw) == 0.0 else "M"


def _delimiter(path: Path, sample: str) -> str:
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".tab"):
        return "\t"
    if suffix == ".csv":
        return ","
    try:
        return csv.Sniffer().sniff(sample, delimiters=",\t;").delimiter
    except csv.Error:
        return "\t" if "\t" in sample.splitlines()[0] else ","


def find_column(fieldnames, wanted: str, table: Path, what: str, required: bool = True) -> str | None:
    if wanted in fieldnames:
        return wanted
    folded = [n for n in fieldnames if n.strip().casefold() == wanted.strip().casefold()]
    if len(folded) == 1:
        return folded[0]
    if not required:
        return None
    present = ", ".join(repr(n) for n in fieldnames)
    if folded:
        raise TableError(f"{table}: {what} column {wanted!r} matches several columns {folded}")
    raise TableError(f"{table}: no {what} column {wanted!r}; columns present: {present}")


def _resolve(source: FileSource, row: dict, column: str | None, subject_id: str, table_dir: Path) -> str | None:
    if not source.given:
        return None
    if column is not None:
        raw = (row.get(column) or "").strip()
        if not raw:
            return None
        path = Path(raw).expanduser()
        return str(path if path.is_absolute() else (table_dir / path).absolute())
    pattern = source.pattern or "{id}.nii.gz"
    return str((Path(source.folder).expanduser() / pattern.format(id=subject_id)).absolute())


def read_table(
    table: str | Path,
    id_column: str = "id",
    image: FileSource = FileSource(),
    labels: FileSource = FileSource(),
    mask: FileSource = FileSource(),
    age_column: str = "age",
    sex_column: str | None = None,
) -> list[SubjectSpec]:
    """All rows of ``table`` as :class:`SubjectSpec`, sorted by id."""
    table = Path(table).expanduser().absolute()
    if not table.is_file():
        raise TableError(f"participants table not found: {table}")
    if not image.given:
        raise TableError("say where the images are: --image-column COL, or --image-dir DIR (+ --image-pattern)")
    text = table.read_text(encoding="utf-8-sig")
    reader = csv.DictReader(text.splitlines(), delimiter=_delimiter(table, text[:4096]))
    fields = list(reader.fieldnames or [])
    if not fields:
        raise TableError(f"{table}: the table is empty (no header line)")
    id_col = find_column(fields, id_column, table, "id")
    age_col = find_column(fields, age_column, table, "age")
    sex_col = find_column(fields, sex_column, table, "sex") if sex_column else None
    cols = {name: (find_column(fields, src.column, table, f"{name} path") if src.column else None)
            for name, src in (("image", image), ("labels", labels), ("mask", mask))}
    specs: dict[str, SubjectSpec] = {}
    for line, row in enumerate(reader, start=2):
        subject_id = (row.get(id_col) or "").strip()
        if not subject_id:
            if not any((v or "").strip() for v in row.values()):
                continue  # a blank line
            raise TableError(f"{table}, line {line}: empty id in column {id_col!r}")
        if "/" in subject_id or "\\" in subject_id or subject_id.startswith("."):
            raise TableError(f"{table}, line {line}: id {subject_id!r} cannot be a file name")
        if subject_id in specs:
            raise TableError(f"{table}, line {line}: id {subject_id!r} appears twice")
        specs[subject_id] = SubjectSpec(
            id=subject_id,
            image=_resolve(image, row, cols["image"], subject_id, table.parent),
            labels=_resolve(labels, row, cols["labels"], subject_id, table.parent),
            mask=_resolve(mask, row, cols["mask"], subject_id, table.parent),
            age_raw=(row.get(age_col) or ""),
            sex_raw=(row.get(sex_col) or "") if sex_col else "",
        )
    if not specs:
        raise TableError(f"{table}: no data rows")
    return [specs[k] for k in sorted(specs)]
