"""The evaluation itself: every held-out subject (split == test) against every method's atlas.

Methods: ``model`` (``--checkpoint``/``--bundle``), each ``--compare NAME=PATH``, ``template`` (zero DVF) and
``linear_average`` (:mod:`diffdef.evaluate.baselines`). Per subject and method: Dice per class after the
affine alignment (on the grid) and, unless disabled, after the deformable protocol
(:mod:`diffdef.evaluate.deformable`); the atlas's lateral-ventricle volume and its error; Table-1 field figures
(DVF methods); NCC and SSIM of the atlas image with the mean image of the held-out subjects of the subject's
decade (inside the template brain mask).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np

from diffdef.data.tissues import tissue_masks
from diffdef.evaluate import stats
from diffdef.evaluate.atlases import (LINEAR, MODEL, TEMPLATE, Atlas, ModelSource, condition_key, curve_conditions,
                                      generate_atlases, template_atlas)
from diffdef.evaluate.baselines import LinearAverage
from diffdef.evaluate.cohort import Subject, decade, split
from diffdef.evaluate.deformable import DemonsSettings, register_labels
from diffdef.evaluate.fused_labels import fused_class_maps
from diffdef.evaluate.scores import CLASSES, dice_per_class, field_figures, ncc, ssim, template_class_maps

PROTOCOLS = ("affine", "deformable")
TEMPLATE_LABELS = ("template", "fused")
FIELD_KEYS = ("folding_pct", "grad_jac", "disp_mm")


def subject_ventricle_ml(subject: Subject, scheme: str, voxel_ml: float) -> float:
    return float(np.count_nonzero(tissue_masks(subject.labels, scheme)["lateral_ventricles"])) * voxel_ml


def evaluate(subjects: Sequence[Subject], sources: Sequence[ModelSource], template, *, scheme: str,
             window: float = 5.0, steps: int = 20, seed: int = 0, samples: int = 4, guidance: float = 1.0,
             batch: int = 8, deformable: DemonsSettings | None = DemonsSettings(),
             curve_ages: Sequence[float] = (), template_labels: str = "template",
             log: Callable[[str], None] = print) -> dict:
    """Score every method on the held-out subjects. Returns ``rows``, ``bins``, ``paired``, ``curves``, ``meta``.

    ``sources[0]`` is the model; the others are compare models. ``deformable=None`` skips the deformable protocol.
    ``template_labels``: the class maps every warped-template method carries: ``template`` (the template's own
    labels) or ``fused`` (the training subjects' labels fused onto the template, :mod:`.fused_labels`; the atlas's
    ventricle volume then comes from the fused lateral-ventricle map too).
    """
    grid = template.grid
    voxel_ml, spacing = float(grid.voxel_volume_ml), float(grid.spacing_mm)
    test, train = split(subjects, "test"), split(subjects, "train")
    if not test:
        raise ValueError("no held-out subject (split == test) in the manifest")
    if template_labels not in TEMPLATE_LABELS:
        raise ValueError(f"template_labels must be one of {TEMPLATE_LABELS}, got {template_labels!r}")
    timings: dict[str, float] = defaultdict(float)
    if template_labels == "fused":
        tic = time.perf_counter()
        class_maps = fused_class_maps(template.labels, [s.labels for s in train], scheme, log=log)
        ventricle_map = class_maps[CLASSES.index("lateral_ventricles")]
        timings["fuse_template_labels"] = time.perf_counter() - tic
    else:
        class_maps = template_class_maps(template.labels, "diffdef")
        ventricle_map = template.ventricle_prob
    brain = np.asarray(template.brain_mask, bool)
    subject_masks = {s.id: tissue_masks(s.labels, scheme) for s in subjects}
    volumes = {s.id: subject_ventricle_ml(s, scheme, voxel_ml) for s in subjects}

    # ---- atlases -------------------------------------------------------------------------------------
    per_method: dict[str, Callable[[Subject], tuple[Atlas, dict]]] = {}
    curves: dict[str, dict] = {}
    montage: dict | None = None
    decades = sorted({decade(s.age) for s in subjects})
    centres = [d + 5.0 for d in decades]
    for source in sources:
        names = tuple(source.opened.info.conditions.names)
        keys = [condition_key(s, names) for s in test]
        curve_keys = curve_conditions(names, [*curve_ages, *centres], subjects) if "age" in names else []
        tic = time.perf_counter()
        made = generate_atlases(source, [*keys, *curve_keys], class_maps, ventricle_map, voxel_ml,
                                steps=steps, seed=seed, samples=samples, guidance=guidance, batch=batch, log=log)
        timings[f"generate_{source.name}"] += time.perf_counter() - tic
        n_curve = len(curve_ages)
        curves[source.name] = {
            "ages": list(map(float, curve_ages)),
            "ventricle_ml": [made[k].ventricle_ml for k in curve_keys[:n_curve]],
            "centre_ventricle_ml": {int(d): made[k].ventricle_ml for d, k in zip(decades, curve_keys[n_curve:])},
            "fixed_conditions": {n: v for n, v in zip(names, curve_keys[0]) if n != "age"} if curve_keys else {},
        }
        per_method[source.name] = lambda s, made=made, names=names: (made[condition_key(s, names)], {})
        if source is sources[0] and curve_keys[:n_curve]:  # the model's atlases along the curve, for the montage
            montage = curve_montage(curve_ages, [made[k] for k in curve_keys[:n_curve]], grid.affine)
    tmpl = template_atlas(template, class_maps, ventricle_map, voxel_ml)
    per_method[TEMPLATE] = lambda s: (tmpl, {})
    curves[TEMPLATE] = {"ages": list(map(float, curve_ages)), "ventricle_ml": [tmpl.ventricle_ml] * len(curve_ages),
                        "centre_ventricle_ml": {int(d): tmpl.ventricle_ml for d in decades}}
    linear = None
    if train:
        linear = LinearAverage([s.age for s in train], [s.image for s in train], [subject_masks[s.id] for s in train],
                               window=window, voxel_volume_ml=voxel_ml)

        def linear_atlas(s: Subject):
            chosen, image, masks = linear.at(s.age)
            atlas = Atlas(image=image, masks=masks, ventricle_ml=linear.ventricle_volume_ml(s.age))
            return atlas, {"linear_n": len(chosen.indices), "linear_window": chosen.window, "linear_widened": chosen.widened}

        per_method[LINEAR] = linear_atlas
        curves[LINEAR] = {"ages": list(map(float, curve_ages)),
                          "ventricle_ml": [linear.ventricle_volume_ml(a) for a in curve_ages],
                          "centre_ventricle_ml": {int(d): linear.ventricle_volume_ml(c) for d, c in zip(decades, centres)}}
    else:
        log("no training subjects (split == train): the linear-average baseline is skipped")

    # ---- mean image of the held-out subjects per decade --------------------------------------------------
    bin_mean = {d: np.mean([s.image for s in test if decade(s.age) == d], axis=0) for d in {decade(s.age) for s in test}}
    similarity_cache: dict[tuple, tuple[float, float]] = {}

    # ---- per subject x method ------------------------------------------------------------------------
    rows = []
    for i, s in enumerate(test, 1):
        for method, atlas_of in per_method.items():
            atlas, info = atlas_of(s)
            row = {"subject": s.id, "age": s.age, "decade": decade(s.age), "method": method,
                   **{f"cond_{k}": v for k, v in s.conditions.items() if k != "age"}}
            row.update({f"dice_affine_{c}": v for c, v in dice_per_class(atlas.masks, subject_masks[s.id]).items()})
            if deformable is not None:
                tic = time.perf_counter()
                warped = register_labels(atlas.image, s.image, s.labels, deformable)
                timings["deformable"] += time.perf_counter() - tic
                timings["deformable_pairs"] += 1
                row.update({f"dice_deformable_{c}": v
                            for c, v in dice_per_class(atlas.masks, tissue_masks(warped, scheme)).items()})
            row["atlas_vent_ml"] = atlas.ventricle_ml
            row["subject_vent_ml"] = volumes[s.id]
            row["vent_error_ml"] = atlas.ventricle_ml - volumes[s.id]
            row["vent_abs_error_ml"] = abs(row["vent_error_ml"])
            row["vent_rel_error"] = row["vent_error_ml"] / volumes[s.id] if volumes[s.id] > 0 else float("nan")
            if atlas.dvf is not None:
                row.update(field_figures(atlas.dvf, spacing, brain))
            key = (method, id(atlas.image), decade(s.age))  # atlas images live as long as the run
            if key not in similarity_cache:
                ref = bin_mean[decade(s.age)]
                similarity_cache[key] = (ncc(atlas.image, ref, brain), ssim(atlas.image, ref, brain))
            row["ncc"], row["ssim"] = similarity_cache[key]
            row.update(info)
            rows.append(row)
        log(f"scored subject {i}/{len(test)} ({s.id})")

    methods = list(per_method)
    protocols = PROTOCOLS if deformable is not None else PROTOCOLS[:1]
    result = {
        "rows": rows, "methods": methods, "protocols": list(protocols), "curves": curves,
        "spearman": {m: stats.spearman([r["age"] for r in rows if r["method"] == m],
                                       [r["atlas_vent_ml"] for r in rows if r["method"] == m]) for m in methods},
        "bins": bin_table(rows, methods, subjects, volumes, curves),
        "paired": paired_table(rows, methods, protocols),
        "counts": {"subjects": len(subjects), "test": len(test), "train": len(train),
                   "deformable_pairs": int(timings.get("deformable_pairs", 0))},
        "timings_s": dict(timings),
        "training_volumes": [{"age": s.age, "vent_ml": volumes[s.id], "split": s.split} for s in subjects],
        "curve_atlases": montage,  # arrays: pictures only, not written to summary.json
    }
    result["model_beats_template_lv"] = {
        p["protocol"]: p["wins"] / p["n"] for p in result["paired"]
        if p["baseline"] == TEMPLATE and p["class"] == "lateral_ventricles" and p["n"]}
    if timings.get("deformable_pairs"):
        result["timings_s"]["deformable_per_pair"] = timings["deformable"] / timings["deformable_pairs"]
    return result


def curve_montage(ages: Sequence[float], atlases: Sequence[Atlas], affine: np.ndarray) -> dict:
    """What the atlas montage draws: ``ages``, atlas ``images`` (D, H, W), ``jacobians`` det(I + grad u) of each
    DVF (D, H, W), ``ventricle_ml`` and the grid ``affine``."""
    from diffdef_runtime.jacobian import jacobian_determinant

    return {"ages": [float(a) for a in ages], "images": [a.image for a in atlases],
            "jacobians": [jacobian_determinant(a.dvf) for a in atlases],
            "ventricle_ml": [float(a.ventricle_ml) for a in atlases], "affine": np.asarray(affine)}


def _numeric_keys(rows: Sequence[dict]) -> list[str]:
    keys = []
    for r in rows:
        for k, v in r.items():
            if k not in keys and k not in ("age", "decade") and isinstance(v, (int, float)) and not isinstance(v, bool):
                keys.append(k)
    return keys


def bin_table(rows, methods, subjects, volumes, curves) -> list[dict]:
    """Per decade and method: means of every figure; the median ventricle volume of ALL prepared subjects of the
    decade and the method's atlas volume at the decade's centre (and its relative error)."""
    out = []
    for d in sorted({r["decade"] for r in rows}):
        all_vols = [volumes[s.id] for s in subjects if decade(s.age) == d]
        median = float(np.median(all_vols)) if all_vols else float("nan")
        for m in methods:
            group = [r for r in rows if r["decade"] == d and r["method"] == m]
            if not group:
                continue
            entry = {"decade": d, "method": m, "n": len(group), "median_subject_vent_ml_all": median,
                     "n_all": len(all_vols)}
            for k in _numeric_keys(group):
                values = [r[k] for r in group if isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)]
                entry[f"mean_{k}"] = float(np.nanmean(values)) if values else float("nan")
            centre = curves.get(m, {}).get("centre_ventricle_ml", {}).get(int(d))
            if centre is not None:
                entry["centre_atlas_vent_ml"] = centre
                entry["centre_rel_error"] = (centre - median) / median if median > 0 else float("nan")
            out.append(entry)
    return out


def paired_table(rows, methods, protocols) -> list[dict]:
    """The model against each other method, per Dice class and protocol (subjects paired by id)."""
    if MODEL not in methods:
        return []
    by = {(r["method"], r["subject"]): r for r in rows}
    subjects = [r["subject"] for r in rows if r["method"] == MODEL]
    out = []
    for other in methods:
        if other == MODEL:
            continue
        for protocol in protocols:
            for c in CLASSES:
                key = f"dice_{protocol}_{c}"
                a = [by[(MODEL, s)][key] for s in subjects]
                b = [by[(other, s)][key] for s in subjects]
                out.append({"baseline": other, "protocol": protocol, "class": c, **stats.paired(a, b)})
    return out
