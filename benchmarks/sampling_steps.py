"""Sampling steps vs atlas quality on the synthetic cohort: which DDIM step count is enough.

For each step count, the atlases of the given ages are generated (same seed, so the same initial noise) and
scored against the cohort's true atlas of each age with :func:`diffdef.synth.scoring.score_atlas` (ventricle and
CSF Dice, volumes); the summary row per step count is the mean over ages, with the generation time per atlas.
Why: the runtime's default step count (``default_steps`` in ``model.json``) is chosen from this table.

    python benchmarks/sampling_steps.py --checkpoint runs/default --steps 5,10,20,50,100,500 --ages 30:85:5
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

DEFAULT_STEPS = "5,10,20,50,100,500"


def score_step_counts(model, ageing, ages: list[float], step_counts: list[int], *, samples: int = 1,
                      seed: int = 0, progress=None) -> list[dict]:
    """One row per (step count, age): ``steps``, ``age``, the :func:`score_atlas` scores and ``seconds``
    (generation wall time per atlas, s). ``model`` is an ``OpenedModel`` on the ageing model's grid;
    ``progress(rows of one step count)`` is called as each step count is done (long runs print as they go)."""
    import torch

    from diffdef.synth.scoring import score_atlas
    from diffdef_runtime.pipeline import generate

    extra = {n: 0.0 for n in model.info.conditions.names if n != "age"}
    rows = []
    for steps in step_counts:
        tic = time.perf_counter()
        results = generate(model.engines, model.info, model.template, {"age": list(ages), **extra}, steps=steps,
                           seed=seed, samples=samples)
        per_atlas = (time.perf_counter() - tic) / len(ages)
        done = [{"steps": steps, "age": float(age), "seconds": per_atlas,
                 **score_atlas(ageing, age, torch.from_numpy(result.dvf)[None])} for age, result in zip(ages, results)]
        rows += done
        if progress is not None:
            progress(done)
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Mean over ages per step count: Dice (ventricles, CSF), volumes (mL), |volume error| (mL), s per atlas."""
    out = []
    for steps in sorted({r["steps"] for r in rows}):
        group = [r for r in rows if r["steps"] == steps]

        def mean(key, group=group):
            return sum(r[key] for r in group) / len(group)

        out.append({"steps": steps, "ages": len(group), "dice_vent": mean("dice_vent"), "dice_csf": mean("dice_csf"),
                    "template_dice_vent": mean("template_dice_vent"), "template_dice_csf": mean("template_dice_csf"),
                    "volume_ml": mean("volume_ml"), "true_volume_ml": mean("true_volume_ml"),
                    "abs_volume_error_ml": sum(abs(r["volume_ml"] - r["true_volume_ml"]) for r in group) / len(group),
                    "seconds_per_atlas": group[0]["seconds"]})
    return out


def format_tables(rows: list[dict]) -> str:
    """The per-age table, then the summary table (plain text)."""
    lines = [" | ".join(f"{h:>9}" for h in ("steps", "age", "vol mL", "true mL", "Dice vent", "Dice CSF", "s/atlas"))]
    for r in rows:
        lines.append(f"{r['steps']:>9} | {r['age']:9.1f} | {r['volume_ml']:9.2f} | {r['true_volume_ml']:9.2f} | "
                     f"{r['dice_vent']:9.4f} | {r['dice_csf']:9.4f} | {r['seconds']:9.2f}")
    lines.append("")
    lines.append(" | ".join(f"{h:>9}" for h in ("steps", "Dice vent", "(tmpl)", "Dice CSF", "(tmpl)", "vol mL",
                                                 "true mL", "|err| mL", "s/atlas")))
    for s in summarise(rows):
        lines.append(f"{s['steps']:>9} | {s['dice_vent']:9.4f} | {s['template_dice_vent']:9.4f} | "
                     f"{s['dice_csf']:9.4f} | {s['template_dice_csf']:9.4f} | {s['volume_ml']:9.2f} | "
                     f"{s['true_volume_ml']:9.2f} | {s['abs_volume_error_ml']:9.2f} | {s['seconds_per_atlas']:9.2f}")
    return "\n".join(lines)


@click.command()
@click.option("--checkpoint", type=click.Path(exists=True, path_type=Path), default=None)
@click.option("--bundle", type=click.Path(exists=True, path_type=Path), default=None)
@click.option("--backend", type=click.Choice(["torch", "ort"]), default="torch", show_default=True)
@click.option("--ages", default="30:85:5", show_default=True)
@click.option("--steps", "step_list", default=DEFAULT_STEPS, show_default=True)
@click.option("--samples", default=1, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--json-out", type=click.Path(path_type=Path), default=None)
def main(checkpoint, bundle, backend, ages, step_list, samples, seed, json_out):
    from diffdef.synth.ageing import AgeingModel
    from diffdef.template import load_template
    from diffdef_runtime.backends import open_model
    from diffdef_runtime.conditions import parse_age_list

    model = open_model(backend, bundle=bundle, checkpoint=checkpoint)
    shape = model.template.t1.shape
    template = next(load_template(g) for g in ("paper", "2mm", "4mm") if load_template(g).t1.shape == shape)
    age_list = parse_age_list(ages)
    counts = [int(s) for s in step_list.split(",")]
    tic = time.perf_counter()
    def progress(done):
        s = summarise(done)[0]
        print(f"{s['steps']} steps: Dice vent {s['dice_vent']:.4f}, Dice CSF {s['dice_csf']:.4f}, volume "
              f"{s['volume_ml']:.2f} mL (true {s['true_volume_ml']:.2f}), {s['seconds_per_atlas']:.2f} s per atlas",
              flush=True)

    rows = score_step_counts(model, AgeingModel(template), age_list, counts, samples=samples, seed=seed,
                             progress=progress)
    print(format_tables(rows))
    print(f"{len(age_list)} ages x {samples} sample(s), seed {seed}, DDIM, {model.engines.name}; "
          f"total {time.perf_counter() - tic:.0f} s")
    if json_out:
        json_out.write_text(json.dumps({"rows": rows, "summary": summarise(rows)}, indent=2))


if __name__ == "__main__":
    main()
