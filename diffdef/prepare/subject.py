"""Prepare one subject: load -> RAS -> N4 -> brain mask -> register -> resample -> normalise -> QC -> volumes.

:func:`prepare_subject` writes ``images/<id>.nii.gz``, ``labels/<id>.nii.gz`` (when labels are given) and
``qc/<id>.png`` atomically and returns a :class:`SubjectResult`; the caller writes the record
(``subjects/<id>.json``) last. An input problem raises :class:`SubjectError`; a subject outside the QC
bounds is returned with ``status="failed"`` and the reason (its files stay, for inspection).
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from diffdef.prepare import qc
from diffdef.prepare.load import SubjectError, load_nifti, same_grid
from diffdef.prepare.table import SubjectSpec

log = logging.getLogger(__name__)

BRAIN_EXTRACTION = ("auto", "labels", "mask", "deepbet")
VOLUME_COLUMNS = {  # manifest column -> tissue class of diffdef.data.tissues
    "ventricle_volume_ml": "lateral_ventricles",
    "ventricles_ml": "ventricles",
    "csf_ml": "csf",
    "gm_ml": "gm",
    "wm_ml": "wm",
    "brain_ml": "brain",
}


@dataclass(frozen=True)
class Options:
    """The options that change the outputs (stored in ``prepare.json``)."""

    grid: str = "2mm"
    brain_extraction: str = "auto"
    label_scheme: str = "muse"
    test_fraction: float = 0.2
    split_seed: int = 0


@dataclass
class SubjectResult:
    """What one subject's record (``subjects/<id>.json``) holds."""

    id: str
    status: str  # "ok" or "failed"
    reason: str = ""
    file: str = ""
    age: float | None = None
    sex: str | None = None
    split: str | None = None
    image: str | None = None  # relative to the output folder
    labels: str | None = None
    qc_picture: str | None = None
    qc: dict = field(default_factory=dict)
    volumes: dict = field(default_factory=dict)
    brain_extraction: str = ""
    start_rotation: list | None = None
    seconds: float = 0.0

    def to_record(self) -> dict:
        return asdict(self)


def registration_grid(grid_name: str) -> str:
    """The template grid registration runs on: the output grid, but 2 mm for the 1 mm paper grid.

    An affine transform has 12 parameters: the 2 mm template pins them down about as well as 1 mm does (IXI014,
    one thread: brain Dice 0.945 in 5.5 s per subject on 2 mm vs 0.948 in 9.6 s on 1 mm), and the resampling to
    1 mm still uses the full-resolution image.
    """
    return "2mm" if grid_name == "paper" else grid_name


@functools.lru_cache(maxsize=2)
def _fixed_image(grid_name: str):
    from diffdef.prepare.register import to_sitk
    from diffdef.template import load_template

    template = load_template(grid_name)
    return to_sitk(template.t1.astype(np.float32), template.grid.affine)


def _choose_extraction(method: str, spec: SubjectSpec) -> str:
    if method == "auto":
        return "mask" if spec.mask else ("labels" if spec.labels else "deepbet")
    if method == "mask" and not spec.mask:
        raise SubjectError(spec.id, "--brain-extraction mask but no mask file is given for this subject")
    if method == "labels" and not spec.labels:
        raise SubjectError(spec.id, "--brain-extraction labels but no label file is given for this subject")
    return method


def _load_companion(spec: SubjectSpec, path: str, what: str, shape, affine) -> np.ndarray:
    data, other_affine = load_nifti(path, spec.id, what)
    if not same_grid(other_affine, data.shape, affine, shape):
        raise SubjectError(spec.id, f"{what} file {path} is not on the image's voxel grid "
                                    f"(shape {data.shape} vs {tuple(shape)}, or a different affine)", path)
    if not np.issubdtype(data.dtype, np.integer):
        rounded = np.rint(data)
        if not np.array_equal(rounded, data):
            raise SubjectError(spec.id, f"{what} file {path} holds non-integer values (not a label map)", path)
        data = rounded
    if data.min() < 0:
        raise SubjectError(spec.id, f"{what} file {path} holds negative ids", path)
    return data.astype(np.int32)


def _write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    from diffdef_runtime.nifti import save_nifti

    save_nifti(data, affine, path)


def prepare_subject(spec: SubjectSpec, out_dir: str | Path, options: Options, split: str | None) -> SubjectResult:
    """Prepare ``spec`` into ``out_dir`` (see the module docstring). Raises :class:`SubjectError`."""
    import SimpleITK as sitk

    from diffdef.data.intensity import to_template_scale
    from diffdef.data.tissues import tissue_volumes_ml
    from diffdef.prepare import register as reg
    from diffdef.template import load_template
    from diffdef_runtime.grid import get_grid

    start = time.perf_counter()
    out_dir = Path(out_dir)
    age = spec.age()
    if age is None:
        raise SubjectError(spec.id, f"subject {spec.id}: age {spec.age_raw!r} in the table is empty or not a number")
    try:
        sex = spec.sex()
    except ValueError as exc:
        raise SubjectError(spec.id, f"subject {spec.id}: {exc}") from None
    method = _choose_extraction(options.brain_extraction, spec)

    # 1-2: load (RAS), companions on the same voxel grid
    data, affine = load_nifti(spec.image, spec.id, "image")
    data = data.astype(np.float32)
    labels = _load_companion(spec, spec.labels, "labels", data.shape, affine) if spec.labels else None
    given_mask = _load_companion(spec, spec.mask, "mask", data.shape, affine) if spec.mask else None
    image = reg.to_sitk(data, affine)

    # 3: N4 inside an Otsu head mask
    image = reg.n4_correct(image)
    corrected, _ = reg.from_sitk(image)

    # 4: brain extraction
    if method == "mask":
        brain = given_mask > 0
    elif method == "labels":
        brain = labels > 0
    else:
        brain = reg.deepbet_mask(corrected)
    if not brain.any():
        raise SubjectError(spec.id, f"brain mask ({method}) of {spec.image} is empty", spec.image)
    brain_image = reg.to_sitk((corrected * brain).astype(np.float32), affine)

    # 5: registration (template -> subject transform)
    grid = get_grid(options.grid)
    registration = reg.register(_fixed_image(registration_grid(grid.name)), brain_image)
    transform = registration.transform
    subject_to_template = np.linalg.inv(reg.ras_matrix(transform))

    # 6: resample onto the grid, mask, normalise
    template = load_template(grid)
    reference = reg.grid_reference(grid)
    moved = reg.resample(brain_image, reference, transform, "linear")
    moved_mask = reg.resample(reg.to_sitk(brain.astype(np.uint8), affine), reference, transform, "nearest")
    moved, _ = reg.from_sitk(moved)
    moved_mask = reg.from_sitk(moved_mask)[0] > 0
    moved = np.clip(moved, 0.0, None) * moved_mask
    if not np.any(moved > 0):
        raise SubjectError(spec.id, f"{spec.image}: the registered brain lies outside the template grid", spec.image)
    prepared = to_template_scale(moved, grid, name=f"{spec.id} ({spec.image})")
    rel_image = f"images/{spec.id}.nii.gz"
    _write_nifti(out_dir / rel_image, prepared.astype(np.float32), grid.affine)

    rel_labels, volumes = None, {}
    if labels is not None:
        moved_labels = reg.resample(reg.to_sitk(labels, affine), reference, transform, "nearest")
        moved_labels = reg.from_sitk(moved_labels)[0]
        dtype = np.int16 if moved_labels.max() < 2**15 else np.int32
        moved_labels = moved_labels.astype(dtype)
        rel_labels = f"labels/{spec.id}.nii.gz"
        _write_nifti(out_dir / rel_labels, moved_labels, grid.affine)
        tissue = tissue_volumes_ml(moved_labels, options.label_scheme, grid.voxel_volume_ml)
        volumes = {column: round(tissue[name], 3) for column, name in VOLUME_COLUMNS.items()}

    # 7: QC
    figures = qc.qc_figures(prepared, moved_mask, template, subject_to_template)
    reason = qc.check_bounds(figures)
    rel_png = f"qc/{spec.id}.png"
    verdict = "pass" if not reason else "FAIL: " + reason
    title = f"{spec.id}  age {age:g}  Dice {figures['qc_brain_dice']:.3f}  NCC {figures['qc_ncc']:.3f}  {verdict}"
    qc.qc_picture(out_dir / rel_png, prepared, template, title=title)
    return SubjectResult(
        id=spec.id, status="failed" if reason else "ok", reason=("QC: " + reason) if reason else "",
        file=spec.image if reason else "", age=age, sex=sex, split=split, image=rel_image, labels=rel_labels,
        qc_picture=rel_png, qc=figures, volumes=volumes, brain_extraction=method,
        start_rotation=registration.start_rotation.astype(int).tolist(),
        seconds=round(time.perf_counter() - start, 2),
    )
