"""Helpers for the diffdef-prepare tests: the shared IXI subset (skip when absent) and small tables."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

IXI = Path(__file__).resolve().parents[2] / "shared" / "data" / "ixi"
IXI_IDS = ("IXI012-HH-1211", "IXI013-HH-1212", "IXI014-HH-1236")


def need_ixi() -> Path:
    if not (IXI / "participants.csv").is_file():
        pytest.skip(f"the shared IXI subset is not at {IXI} (shared/data/ixi beside the repository)")
    return IXI


def ixi_row(subject_id: str) -> dict:
    with open(need_ixi() / "participants.csv", newline="") as handle:
        return next(r for r in csv.DictReader(handle) if r["MRID"] == subject_id)


def write_table(path: Path, rows: list[dict]) -> Path:
    """A CSV with columns id, age, sex, image, labels (paths as given)."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "age", "sex", "image", "labels"])
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in writer.fieldnames})
    return path


def ixi_rows(ids=IXI_IDS) -> list[dict]:
    ixi = need_ixi()
    return [{"id": i, "age": ixi_row(i)["Age"], "sex": ixi_row(i)["Sex"], "image": str(ixi / "t1" / f"{i}_T1.nii.gz"),
             "labels": str(ixi / "seg" / f"{i}_T1_DLMUSE.nii.gz")} for i in ids]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))
