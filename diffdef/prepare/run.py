"""Orchestration: options check, the split, resume, workers, shards, and the merge into manifest/failures/QC.

Output folder: ``images/``, ``labels/``, ``qc/`` (per subject, atomic), ``subjects/<id>.json`` (the record,
written last: its presence means the subject is done), ``prepare.json`` (the options that change outputs and
the table's ids), ``manifest.csv``, ``failures.csv``, ``qc.html``, ``prepare.log``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path

from diffdef.prepare.load import SubjectError
from diffdef.prepare.subject import VOLUME_COLUMNS, Options, SubjectResult, prepare_subject
from diffdef.prepare.table import SubjectSpec

log = logging.getLogger("diffdef.prepare")

FORMAT_VERSION = 1
MANIFEST_COLUMNS = ["id", "path", "labels", "age", "sex", "split", "qc_brain_dice", "qc_ncc", "qc_scale_min",
                    "qc_scale_max", "qc_det", *VOLUME_COLUMNS]
FAILURE_COLUMNS = ["id", "file", "reason"]


class PrepareError(RuntimeError):
    """The run cannot go on (options differ from the folder's, missing records at merge, ...)."""


def add_log_file(out_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(Path(out_dir) / "prepare.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(message)s"))
    logging.getLogger("diffdef").addHandler(handler)
    logging.getLogger("diffdef").setLevel(logging.INFO)
    return handler


def check_options(out_dir: Path, settings: dict, overwrite: bool) -> None:
    """Write ``prepare.json``, or refuse when the folder was prepared with other settings (unless overwrite)."""
    path = out_dir / "prepare.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != settings:
            if not overwrite:
                diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
                changes = [f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in diff if k != "ids"]
                if "ids" in diff:
                    changes.append("the table lists other subject ids")
                raise PrepareError(
                    f"{out_dir} was prepared with other settings ({'; '.join(changes)}). "
                    "Use another --out, or --overwrite to delete its results and start again.")
            log.warning("--overwrite: settings changed, deleting the previous results in %s", out_dir)
            for name in ("subjects", "images", "labels", "qc"):
                shutil.rmtree(out_dir / name, ignore_errors=True)
            for name in ("manifest.csv", "failures.csv", "qc.html"):
                (out_dir / name).unlink(missing_ok=True)
    from diffdef_runtime.atomic import write_json

    write_json(path, settings)


def settings_of(options: Options, specs: list[SubjectSpec]) -> dict:
    return {"format": FORMAT_VERSION, **asdict(options), "ids": [s.id for s in specs]}


def record_path(out_dir: Path, subject_id: str) -> Path:
    return Path(out_dir) / "subjects" / f"{subject_id}.json"


def _worker_init(threads: int, log_dir: str | None) -> None:
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass
    if log_dir:  # a forked worker inherits the parent's handler; a spawned one needs its own
        target = str((Path(log_dir) / "prepare.log").absolute())
        if not any(getattr(h, "baseFilename", None) == target for h in logging.getLogger("diffdef").handlers):
            add_log_file(Path(log_dir))


def run_one(spec: SubjectSpec, out_dir: str, options: Options, split: str | None) -> dict:
    """Prepare one subject and write its record (last); never raises for a subject's problem."""
    from diffdef_runtime.atomic import write_json

    try:
        result = prepare_subject(spec, out_dir, options, split)
        if result.status == "ok":
            log.info("%s: ok (Dice %.3f, NCC %.3f, %.1f s)", spec.id, result.qc["qc_brain_dice"], result.qc["qc_ncc"],
                     result.seconds)
        else:
            log.warning("%s: fails QC, left out of the manifest: %s", spec.id, result.reason)
    except SubjectError as exc:
        log.warning("%s: failed: %s", spec.id, exc.reason)
        result = SubjectResult(id=spec.id, status="failed", reason=exc.reason, file=exc.file, age=spec.age(),
                               split=split)
    except Exception as exc:  # an unexpected error in one subject must not stop the cohort
        log.error("%s: unexpected error: %s\n%s", spec.id, exc, traceback.format_exc())
        result = SubjectResult(id=spec.id, status="failed", reason=f"unexpected error: {type(exc).__name__}: {exc}",
                               file=spec.image or "", age=spec.age(), split=split)
    record = result.to_record()
    write_json(record_path(Path(out_dir), spec.id), record)
    return record


def parse_shard(text: str | None) -> tuple[int, int]:
    if not text:
        return 1, 1
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise PrepareError(f"--shard {text!r}: write K/N, e.g. 1/4") from None
    if not 1 <= k <= n:
        raise PrepareError(f"--shard {text!r}: K must be in 1..N")
    return k, n


def prepare_cohort(specs: list[SubjectSpec], out_dir: str | Path, options: Options, workers: int = 1,
                   shard: str | None = None, overwrite: bool = False, progress=None) -> dict | None:
    """Prepare every subject of this shard; without a shard also merge. Returns the merge summary (or None)."""
    from diffdef.prepare.split import assign_split

    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    handler = add_log_file(out_dir)
    try:
        specs = sorted(specs, key=lambda s: s.id)
        check_options(out_dir, settings_of(options, specs), overwrite)
        split = assign_split([(s.id, s.age()) for s in specs], options.test_fraction, options.split_seed)
        k, n = parse_shard(shard)
        mine = [s for i, s in enumerate(specs) if i % n == k - 1]
        todo = [s for s in mine if not record_path(out_dir, s.id).exists()]
        log.info("%d subjects in the table, %d in shard %d/%d; %d already done (skipped), %d to prepare",
                 len(specs), len(mine), k, n, len(mine) - len(todo), len(todo))
        workers = max(1, min(int(workers), len(todo) or 1))
        threads = max(1, (os.cpu_count() or 1) // workers)
        if progress is not None:
            progress(None, len(todo))
        if workers == 1:
            _worker_init(threads, None)
            for spec in todo:
                record = run_one(spec, str(out_dir), options, split.get(spec.id))
                if progress is not None:
                    progress(record, len(todo))
        else:
            with ProcessPoolExecutor(workers, initializer=_worker_init, initargs=(threads, str(out_dir))) as pool:
                futures = [pool.submit(run_one, s, str(out_dir), options, split.get(s.id)) for s in todo]
                for future in as_completed(futures):
                    if progress is not None:
                        progress(future.result(), len(todo))
        if n > 1:
            log.info("shard %d/%d done; run `diffdef-prepare --merge %s` when every shard is", k, n, out_dir)
            return None
        return merge(out_dir)
    finally:
        logging.getLogger("diffdef").removeHandler(handler)
        handler.close()


def merge(out_dir: str | Path) -> dict:
    """Build ``manifest.csv``, ``failures.csv`` and ``qc.html`` from every subject's record."""
    from diffdef.data.manifest import write_manifest
    from diffdef.prepare.qc import write_qc_html

    out_dir = Path(out_dir).absolute()
    settings_file = out_dir / "prepare.json"
    if not settings_file.exists():
        raise PrepareError(f"{out_dir} has no prepare.json: not a diffdef-prepare output folder")
    ids = json.loads(settings_file.read_text())["ids"]
    missing = [i for i in ids if not record_path(out_dir, i).exists()]
    if missing:
        shown = ", ".join(missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
        raise PrepareError(f"cannot merge {out_dir}: {len(missing)} subject(s) have no record yet: {shown}")
    records = [json.loads(record_path(out_dir, i).read_text()) for i in ids]
    rows, failures = [], []
    for r in records:
        if r["status"] == "ok":
            rows.append({"id": r["id"], "path": r["image"], "labels": r.get("labels"), "age": r["age"],
                         "sex": r.get("sex"), "split": r.get("split"), **r["qc"], **(r.get("volumes") or {})})
        else:
            failures.append({"id": r["id"], "file": r.get("file") or "", "reason": r["reason"]})
    write_manifest(out_dir / "manifest.csv", rows, MANIFEST_COLUMNS)
    write_manifest(out_dir / "failures.csv", failures, FAILURE_COLUMNS)
    write_qc_html(out_dir / "qc.html", records)
    log.info("merged %d subjects: %d in manifest.csv, %d in failures.csv", len(records), len(rows), len(failures))
    for f in failures:
        log.warning("left out: %s (%s)", f["id"], f["reason"])
    return {"subjects": len(records), "ok": len(rows), "failed": len(failures)}
