"""A Python API for notebooks: open a model once, generate atlases for any conditions, save them.

    from diffdef_runtime.api import AtlasGenerator
    gen = AtlasGenerator("runs/default/bundle")             # ONNX Runtime on the CPU, no torch
    results = gen.generate(age=[60, 70, 80], samples=4)      # list of AtlasResult, one per age
    gen.save(results, "atlases")                             # same files as `diffdef-run`

``diffdef-run`` is a command-line layer over this module (conditions checked once by :func:`condition_values`,
the output folder owned by :func:`output_run`), so the API, the CLI and the benchmarks produce identical atlases
for identical arguments.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from diffdef_runtime.conditions import ConditionSpec, check_possible, parse_age_list
from diffdef_runtime.pipeline import AtlasResult

log = logging.getLogger(__name__)

#: Where ``diffdef-train all --preset default --out runs/default`` + ``diffdef-export`` put the bundle.
DEFAULT_BUNDLE = Path("runs/default/bundle")
DEFAULT_BUNDLE_HOWTO = (
    "Make one with\n"
    "  diffdef-train all --preset default --out runs/default\n"
    "  diffdef-export runs/default -o runs/default/bundle\n"
    "or run a checkpoint directly: --checkpoint runs/default --backend torch")


def resolve_source(bundle: str | Path | None, checkpoint: str | Path | None) -> tuple[Path | None, Path | None]:
    """Apply the default bundle and check that the given paths exist; errors (ValueError) name the path."""
    if bundle is not None and checkpoint is not None:
        raise ValueError("give a bundle or a checkpoint, not both")
    if bundle is None and checkpoint is None:
        if not (DEFAULT_BUNDLE / "manifest.json").is_file():
            raise ValueError(f"no bundle given and the default bundle {DEFAULT_BUNDLE} does not exist. "
                             + DEFAULT_BUNDLE_HOWTO)
        bundle = DEFAULT_BUNDLE
    for path, what in ((bundle, "bundle"), (checkpoint, "checkpoint")):
        if path is not None and not Path(path).exists():
            raise ValueError(f"{what} not found: {path}")
    return (Path(bundle) if bundle is not None else None, Path(checkpoint) if checkpoint is not None else None)


class ConditionError(ValueError):
    """A condition value no subject can have, or that cannot be read; ``name`` is the condition (``age``, ``sex``,
    ``ventricle_volume_ml``)."""

    def __init__(self, name: str, message: str):
        super().__init__(message)
        self.name = name


def _numbers(name: str, value: Any) -> Any:
    """A CLI-style string (``"50:80:10"`` for age, ``"20,30"`` for ventricles) as a list of floats; anything else
    as given."""
    if not isinstance(value, str) or name == "sex":
        return value
    if name == "age":
        return parse_age_list(value)
    try:
        return [float(v) for v in value.split(",")]
    except ValueError:
        raise ValueError(f"{value!r} is not a number or comma-separated numbers (mL)") from None


def condition_values(age: Any = None, sex: Any = None, ventricles: Any = None) -> dict[str, Any]:
    """Keyword conditions -> the dict ``ConditionSpec.normalise`` takes, checked once here: ``age`` a number, a
    list or a CLI-style string (``"50:80:10"``); ``sex`` F/M (or a list); ``ventricles`` mL (a number, a list or
    ``"20,30"``). An impossible or unreadable value raises :class:`ConditionError` naming the condition; no
    condition, or the same condition asked twice (each writes one folder), a ValueError."""
    from diffdef_runtime.conditions import parse_sex
    from diffdef_runtime.outputs import duplicate_labels

    values: dict[str, Any] = {}
    for name, value in (("age", age), ("sex", sex), ("ventricle_volume_ml", ventricles)):
        if value is None:
            continue
        try:
            values[name] = _numbers(name, value)
            listed = values[name]
            check_possible(name, list(listed) if isinstance(listed, (list, tuple)) or getattr(listed, "ndim", 0)
                           else [listed])
        except ValueError as err:
            raise ConditionError(name, str(err)) from err
    if not values:
        raise ValueError("give at least one condition, e.g. age=70")
    lengths = {len(v) for v in values.values() if isinstance(v, (list, tuple))}
    if len(lengths) == 1:  # otherwise one condition each, or unequal lists (the model's check names those)
        n = lengths.pop()
        rows = [{name: v[i] if isinstance(v, (list, tuple)) else v for name, v in values.items()} for i in range(n)]
        rows = [{name: parse_sex(v) if name == "sex" else v for name, v in row.items()} for row in rows]
        twice = duplicate_labels(rows)
        if twice:
            raise ValueError(f"condition {twice[0]} is asked more than once; each condition writes one folder")
    return values


@contextlib.contextmanager
def output_run(out_dir: str | Path, *, overwrite: bool = True, wait: bool = False, owner: str = "AtlasGenerator"
               ) -> Iterator[str]:
    """Own ``out_dir`` for one run and yield its run id: ``out_dir`` is checked (a ValueError names it when it is
    a file, not writable, or not empty without ``overwrite``), locked for the block (``FolderBusyError`` when
    another run holds it, unless ``wait``), checked again (a run waited for may have filled it), and cleared of
    what killed runs left."""
    from diffdef_runtime import atomic
    from diffdef_runtime.outfolder import check_out_folder, locked_folder
    from diffdef_runtime.outputs import new_run_id

    check_out_folder(out_dir, overwrite)
    run_id = new_run_id()
    with locked_folder(out_dir, f"{owner} pid {os.getpid()}, run {run_id}", wait=wait):
        check_out_folder(out_dir, overwrite)
        for stale in atomic.remove_stale(out_dir):
            log.info("removed %s, left by a killed run", stale)
        yield run_id


class AtlasGenerator:
    """A loaded model (bundle on ``ort``/``tensorrt``/``torch``, or a training checkpoint on ``torch``).

    Args:
        bundle: an exported bundle folder (default ``runs/default/bundle`` when neither is given).
        checkpoint: a training output folder (``backend="torch"`` only).
        backend: ``ort`` (default, no torch), ``tensorrt`` or ``torch``.
        device: ``cpu`` or ``cuda`` (``cuda:N``).
        verify: ``"full"`` re-hashes every bundle file; True trusts large files unchanged since last hashed.
    """

    def __init__(self, bundle: str | Path | None = None, checkpoint: str | Path | None = None,
                 backend: str = "ort", device: str = "cpu", verify: bool | str = True):
        from diffdef_runtime import backends

        bundle, checkpoint = resolve_source(bundle, checkpoint)
        self.model = backends.open_model(backend, bundle=bundle, checkpoint=checkpoint, device=device, verify=verify)
        self.backend, self.device = backend, device

    # ------------------------------------------------------------------------------------------ properties
    @property
    def conditions(self) -> ConditionSpec:
        """Which conditions the model takes, their normalisation ranges and trained ranges."""
        return self.model.info.conditions

    @property
    def condition_names(self) -> tuple[str, ...]:
        return self.conditions.names

    @property
    def trained_range(self) -> dict[str, tuple[float, float]]:
        """name -> (min, max) seen in training; values outside it work but warn (extrapolation)."""
        return dict(self.conditions.trained)

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        return tuple(self.model.template.t1.shape)  # type: ignore[return-value]

    @property
    def affine(self):
        return self.model.affine

    @property
    def source(self) -> str:
        return self.model.source

    def __repr__(self) -> str:
        return (f"AtlasGenerator({self.source!r}, backend={self.model.engines.name!r}, device={self.device!r}, "
                f"conditions={list(self.condition_names)}, grid={self.grid_shape})")

    # ------------------------------------------------------------------------------------------ generation
    def check(self, conditions: dict[str, Any]) -> list[str]:
        """``conditions`` (from :func:`condition_values`) against the model before the long part: a missing or
        unknown condition raises ValueError; returns the message of each value outside the trained range (those
        run, extrapolated)."""
        from diffdef_runtime.conditions import ExtrapolationWarning

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ExtrapolationWarning)
            self.conditions.normalise(conditions)
        for w in caught:  # other warnings go on as they came
            if not issubclass(w.category, ExtrapolationWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return [str(w.message) for w in caught if issubclass(w.category, ExtrapolationWarning)]

    def generate(self, age: float | Sequence[float] | str | None = None, sex: Any = None, ventricles: Any = None,
                 *, conditions: dict[str, Any] | None = None, steps: int | None = None, sampler: str = "ddim",
                 seed: int = 0, samples: int = 1, guidance: float = 1.0,
                 progress: Callable[[int, int], None] | None = None) -> list[AtlasResult]:
        """One atlas per condition (lists broadcast against scalars), e.g. ``generate(age=[60, 70], sex="F")``, or
        ``generate(conditions=condition_values(...))`` for conditions already checked.

        See ``diffdef_runtime.pipeline.generate`` for steps, sampler, seed, samples, guidance and progress;
        ``steps=None`` takes the model's ``default_steps``.
        Values outside the trained range warn (``ExtrapolationWarning``) and still run; the same condition asked
        twice is a ValueError (each condition writes one folder).
        """
        from diffdef_runtime import pipeline

        if conditions is None:
            conditions = condition_values(age, sex, ventricles)
        elif (age, sex, ventricles) != (None, None, None):
            raise ValueError("give conditions as keywords (age=, sex=, ventricles=) or as conditions=, not both")
        return pipeline.generate(self.model.engines, self.model.info, self.model.template, conditions,
                                 steps=steps if steps is not None else self.model.info.default_steps,
                                 sampler=sampler, seed=seed, samples=samples, guidance=guidance, progress=progress)

    @property
    def template_ventricle_ml(self) -> float:
        """The template's ventricle volume (mL): what an atlas with a zero DVF has."""
        return float(self.model.template.ventricle_prob.sum() * self.model.info.voxel_volume_ml)

    def save(self, results: AtlasResult | Sequence[AtlasResult], out_dir: str | Path, wait: bool = False, *,
             outputs: Sequence[str] | None = None, compress: bool = True, overwrite: bool = True) -> list[Path]:
        """Write ``results`` into ``out_dir`` as one run owning it (:func:`output_run`; ``wait``: wait for another
        writer instead of raising ``FolderBusyError``). Existing folders of these conditions are replaced whole;
        with ``overwrite=False`` a non-empty ``out_dir`` is refused. Returns the condition folders."""
        with output_run(out_dir, overwrite=overwrite, wait=wait) as run_id:
            return self.write(results, out_dir, run_id, outputs=outputs, compress=compress)

    def write(self, results: AtlasResult | Sequence[AtlasResult], out_dir: str | Path, run_id: str, *,
              outputs: Sequence[str] | None = None, compress: bool = True) -> list[Path]:
        """Write each result to ``out_dir/<condition>/`` (``outputs``: a subset of atlas, dvf, jacobian NIfTIs,
        .nii.gz or with ``compress=False`` .nii, and preview.png, default all; record.json always) and, for two or more with a
        preview, ``summary.png``, ``volumes.png`` and ``index.html`` into ``out_dir``. The caller owns ``out_dir``
        for run ``run_id`` (:func:`output_run`). Returns the condition folders."""
        from diffdef_runtime.outputs import OUTPUTS, duplicate_labels, write_result
        from diffdef_runtime.series import write_series

        outputs = tuple(OUTPUTS if outputs is None else outputs)
        if isinstance(results, AtlasResult):
            results = [results]
        twice = duplicate_labels([r.condition for r in results])
        if twice:
            raise ValueError(f"condition {twice[0]} is given more than once; each condition writes one folder")
        folders = [write_result(r, self.model.affine, out_dir, extra={"source": self.model.source}, run_id=run_id,
                                outputs=outputs, compress=compress) for r in results]
        if len(results) > 1 and "preview" in outputs:  # a series; one atlas has its own folder only
            write_series(results, out_dir, folders, template_ventricle_ml=self.template_ventricle_ml,
                         affine=self.model.affine, meta={"model": self.model.source})
        return folders
