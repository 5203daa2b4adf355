"""Atlases of every method for the held-out subjects: generated model atlases, the template and linear averages.

An :class:`Atlas` is what scoring needs: the atlas image, its class masks, its lateral-ventricle volume and (for a
DVF method) the DVF. Model atlases are generated in batches, one per distinct condition tuple of the held-out
subjects (the pipeline's noise depends on seed and sample only, so batching does not change an atlas).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffdef.evaluate.cohort import Subject
from diffdef.evaluate.scores import atlas_class_masks, soft_volume_ml

MODEL = "model"
TEMPLATE = "template"
LINEAR = "linear_average"


@dataclass
class Atlas:
    image: np.ndarray  # (D, H, W)
    masks: dict[str, np.ndarray]  # class -> bool (D, H, W)
    ventricle_ml: float
    dvf: np.ndarray | None = None  # (3, D, H, W) voxels, DVF methods only
    extra: dict | None = None


@dataclass
class ModelSource:
    """A model to score: ``name``, the opened model (``open_model``), where it came from."""

    name: str
    opened: object
    path: str
    backend: str


def open_source(name: str, path: str | Path, backend: str) -> ModelSource:
    """Open a checkpoint folder (has ``model.json``: torch backend) or an exported bundle (``backend``)."""
    from diffdef_runtime.backends import open_model

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{name}: {path} does not exist")
    if (path / "model.json").is_file():
        return ModelSource(name, open_model("torch", checkpoint=path), str(path.resolve()), "torch")
    return ModelSource(name, open_model(backend, bundle=path), str(path.resolve()), backend)


def condition_key(subject: Subject, names: Sequence[str]) -> tuple[float, ...]:
    """The model's condition tuple of a subject; a KeyError names a condition the manifest did not provide."""
    missing = [n for n in names if n not in subject.conditions]
    if missing:
        raise KeyError(f"subject {subject.id}: no value for condition(s) {missing}")
    return tuple(float(subject.conditions[n]) for n in names)


def generate_atlases(source: ModelSource, keys: Sequence[tuple[float, ...]], class_maps: np.ndarray,
                     ventricle_prob: np.ndarray, voxel_volume_ml: float, *, steps: int, seed: int, samples: int,
                     guidance: float = 1.0, batch: int = 8,
                     log: Callable[[str], None] = lambda _m: None) -> dict[tuple[float, ...], Atlas]:
    """One atlas per distinct condition tuple (in the model's condition order), generated ``batch`` at a time."""
    from diffdef_runtime.conditions import ExtrapolationWarning
    from diffdef_runtime.pipeline import generate

    model = source.opened
    names = tuple(model.info.conditions.names)
    unique = list(dict.fromkeys(tuple(k) for k in keys))
    atlases: dict[tuple[float, ...], Atlas] = {}
    extrapolated = 0
    for start in range(0, len(unique), max(1, batch)):
        chunk = unique[start:start + max(1, batch)]
        values = {n: [k[j] for k in chunk] for j, n in enumerate(names)}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ExtrapolationWarning)
            results = generate(model.engines, model.info, model.template, values, steps=steps, seed=seed,
                               samples=samples, guidance=guidance)
        extrapolated += sum(issubclass(w.category, ExtrapolationWarning) for w in caught)
        for key, result in zip(chunk, results):
            dvf = np.asarray(result.dvf, np.float32)
            atlases[key] = Atlas(image=np.asarray(result.atlas, np.float32), masks=atlas_class_masks(class_maps, dvf),
                                 ventricle_ml=soft_volume_ml(ventricle_prob, dvf, voxel_volume_ml), dvf=dvf,
                                 extra={"runtime_ventricle_ml": float(result.ventricle_volume_ml)})
        log(f"{source.name}: {min(start + len(chunk), len(unique))}/{len(unique)} atlases")
    if extrapolated:
        log(f"{source.name}: some conditions lie outside the trained range (extrapolation, never validated)")
    return atlases


def template_atlas(template, class_maps: np.ndarray, ventricle_map: np.ndarray, voxel_volume_ml: float) -> Atlas:
    """The template as an atlas: zero DVF through the same soft warp + threshold as every DVF method;
    ``ventricle_map`` (D, H, W) is the soft lateral-ventricle map whose volume it reports."""
    zero = np.zeros((3, *template.t1.shape), np.float32)
    return Atlas(image=np.asarray(template.t1, np.float32), masks=atlas_class_masks(class_maps, zero),
                 ventricle_ml=soft_volume_ml(ventricle_map, zero, voxel_volume_ml), dvf=zero)


def curve_conditions(names: Sequence[str], ages: Sequence[float], subjects: Sequence[Subject]) -> list[tuple]:
    """Condition tuples for the volume-vs-age curve: age varies; sex fixed at the cohort's most common value,
    any other condition at the cohort median."""
    fixed = {}
    for n in names:
        if n == "age":
            continue
        values = np.asarray([s.conditions[n] for s in subjects if n in s.conditions], np.float64)
        if n == "sex":
            fixed[n] = float(np.round(values.mean())) if values.size else 0.0
        else:
            fixed[n] = float(np.median(values)) if values.size else math.nan
    return [tuple(float(a) if n == "age" else fixed[n] for n in names) for a in ages]
