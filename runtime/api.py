"""A Python API for notebooks: open a model once, generate atlases for any conditions, save them.

    from diffdef_runtime.api import AtlasGenerator
    gen = AtlasGenerator("runs/default/bundle")             # ONNX Runtime on the CPU, no torch
    results = gen.generate(age=[60, 70, 80], samples=4)      # list of AtlasResult, one per age
    gen.save(results, "atlases")                             # same files as `diffdef-run`

Everything here delegates to ``backends.open_model``, ``pipeline.generate`` and ``outputs.write_result``:
the API, the CLI and the benchmarks produce identical atlases for identical arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from diffdef_runtime.conditions import ConditionSpec, check_possible, parse_age_list
from diffdef_runtime.pipeline import AtlasResult

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


def condition_values(age: Any = None, sex: Any = None, ventricles: Any = None) -> dict[str, Any]:
    """Keyword conditions -> the dict ``ConditionSpec.normalise`` takes. ``age`` may be a number, a list or
    a CLI-style string (``"50:80:10"``); ``sex`` F/M (or a list); ``ventricles`` mL (or a list)."""
    values: dict[str, Any] = {}
    if age is not None:
        values["age"] = parse_age_list(age) if isinstance(age, str) else age
    if sex is not None:
        values["sex"] = sex
    if ventricles is not None:
        values["ventricle_volume_ml"] = ventricles
    if not values:
        raise ValueError("give at least one condition, e.g. age=70")
    for name, value in values.items():  # impossible values (negative age, ...) are errors, not extrapolation
        check_possible(name, list(value) if isinstance(value, (list, tuple)) or getattr(value, "ndim", 0) else [value])
    return values


class AtlasGenerator:
    """A loaded model (bundle on ``ort``/``tensorrt``/``torch``, or a training checkpoint on ``torch``).

    Args:
        bundle: an exported bundle folder (default ``runs/default/bundle`` when neither is given).
        checkpoint: a training output folder (``backend="torch"`` only).
        backend: ``ort`` (default, no torch), ``tensorrt`` or ``torch``.
        device: ``cpu`` or ``cuda`` (``cuda:N``).
    """

    def __init__(self, bundle: str | Path | None = None, checkpoint: str | Path | None = None,
                 backend: str = "ort", device: str = "cpu"):
        from diffdef_runtime.backends import open_model

        bundle, checkpoint = resolve_source(bundle, checkpoint)
        self.model = open_model(backend, bundle=bundle, checkpoint=checkpoint, device=device)
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
    def generate(self, age: float | Sequence[float] | str | None = None, sex: Any = None, ventricles: Any = None,
                 *, steps: int | None = None, sampler: str = "ddim", seed: int = 0, samples: int = 1,
                 guidance: float = 1.0, progress: Callable[[int, int], None] | None = None) -> list[AtlasResult]:
        """One atlas per condition (lists broadcast against scalars), e.g. ``generate(age=[60, 70], sex="F")``.

        See ``diffdef_runtime.pipeline.generate`` for steps, sampler, seed, samples, guidance and progress;
        ``steps=None`` takes the model's ``default_steps``.
        Values outside the trained range warn (``ExtrapolationWarning``) and still run.
        """
        from diffdef_runtime.pipeline import generate

        return generate(self.model.engines, self.model.info, self.model.template,
                        condition_values(age, sex, ventricles),
                        steps=steps if steps is not None else self.model.info.default_steps, sampler=sampler,
                        seed=seed, samples=samples, guidance=guidance, progress=progress)

    @property
    def template_ventricle_ml(self) -> float:
        """The template's ventricle volume (mL): what an atlas with a zero DVF has."""
        return float(self.model.template.ventricle_prob.sum() * self.model.info.voxel_volume_ml)

    def save(self, results: AtlasResult | Sequence[AtlasResult], out_dir: str | Path, wait: bool = False
             ) -> list[Path]:
        """Write each result to ``out_dir/<condition>/`` (atlas, dvf, jacobian NIfTIs, preview.png,
        record.json) and, for two or more, ``summary.png``, ``volumes.png`` and ``index.html`` into ``out_dir``,
        as one run holding ``out_dir``'s lock like ``diffdef-run`` (``wait``: wait for another writer instead of
        raising ``FolderBusyError``); existing folders of these conditions are replaced whole. Returns the
        folders."""
        import os

        from diffdef_runtime import atomic
        from diffdef_runtime.outfolder import locked_folder
        from diffdef_runtime.outputs import duplicate_labels, new_run_id, write_result
        from diffdef_runtime.series import write_series

        if isinstance(results, AtlasResult):
            results = [results]
        twice = duplicate_labels([r.condition for r in results])
        if twice:
            raise ValueError(f"condition {twice[0]} is given more than once; each condition writes one folder")
        run_id = new_run_id()
        with locked_folder(out_dir, f"AtlasGenerator.save pid {os.getpid()}, run {run_id}", wait=wait):
            atomic.remove_stale(out_dir)
            folders = [write_result(r, self.model.affine, out_dir, extra={"source": self.model.source},
                                    run_id=run_id) for r in results]
            if len(results) > 1:
                write_series(results, out_dir, folders, template_ventricle_ml=self.template_ventricle_ml,
                             affine=self.model.affine, meta={"model": self.model.source})
        return folders
