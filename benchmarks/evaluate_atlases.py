"""Atlas quality on the synthetic cohort, where the true conditional atlas is known.

For each age: generate the atlas (any backend) and score its DVF against the true atlas of that age
(:func:`diffdef.synth.scoring.score_atlas`: ventricle Dice and CSF Dice, CSF including the ventricles, next to the
same Dice of the plain template). Also: ventricle volume vs age (Spearman rho), folding ratio, mean displacement.

    python benchmarks/evaluate_atlases.py --checkpoint runs/default --ages 30:85:5 --samples 4
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click


@click.command()
@click.option("--checkpoint", type=click.Path(exists=True, path_type=Path), default=None)
@click.option("--bundle", type=click.Path(exists=True, path_type=Path), default=None)
@click.option("--backend", type=click.Choice(["torch", "ort"]), default="torch", show_default=True)
@click.option("--ages", default="30:85:5", show_default=True)
@click.option("--steps", default=20, show_default=True)
@click.option("--samples", default=4, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--guidance", default=1.0, show_default=True, help="classifier-free guidance scale (1 = off)")
@click.option("--json-out", type=click.Path(path_type=Path), default=None)
def main(checkpoint, bundle, backend, ages, steps, samples, seed, guidance, json_out):
    import torch
    from scipy.stats import spearmanr

    from diffdef.geometry import folding_ratio, mean_displacement_mm
    from diffdef.synth.ageing import AgeingModel
    from diffdef.synth.scoring import score_atlas, wins_over_template
    from diffdef.template import load_template
    from diffdef_runtime.backends import open_model
    from diffdef_runtime.conditions import parse_age_list
    from diffdef_runtime.pipeline import generate

    model = open_model(backend, bundle=bundle, checkpoint=checkpoint)
    grid_shape = model.template.t1.shape
    template = next(load_template(g) for g in ("paper", "2mm", "4mm") if load_template(g).t1.shape == grid_shape)
    ageing = AgeingModel(template)
    age_list = parse_age_list(ages)
    extra = {n: 0.0 for n in model.info.conditions.names if n != "age"}
    tic = time.perf_counter()
    results = generate(model.engines, model.info, model.template, {"age": age_list, **extra}, steps=steps,
                       seed=seed, samples=samples, guidance=guidance)
    seconds = time.perf_counter() - tic

    rows = []
    for age, result in zip(age_list, results):
        dvf = torch.from_numpy(result.dvf)[None]
        rows.append({
            "age": age,
            **score_atlas(ageing, age, dvf),
            "volume_ml": result.ventricle_volume_ml,  # the pipeline's own figure (the same soft volume)
            "folding_pct": 100 * float(folding_ratio(dvf)[0]),
            "mean_disp_mm": float(mean_displacement_mm(dvf, float(abs(model.affine[0, 0])))[0]),
        })
    rho = float(spearmanr([r["age"] for r in rows], [r["volume_ml"] for r in rows]).statistic)
    header = ("age", "vol mL", "true mL", "Dice vent", "tmpl", "Dice CSF", "tmpl", "fold %", "disp mm")
    print(" | ".join(f"{h:>9}" for h in header))
    for r in rows:
        values = (r["age"], r["volume_ml"], r["true_volume_ml"], r["dice_vent"], r["template_dice_vent"],
                  r["dice_csf"], r["template_dice_csf"], r["folding_pct"], r["mean_disp_mm"])
        print(" | ".join(f"{v:9.3f}" if isinstance(v, float) else f"{v:>9}" for v in values))
    better_vent, better_csf = wins_over_template(rows)
    print(f"Spearman rho(volume, age) = {rho:.3f}; atlas beats template on ventricle Dice at {better_vent}/{len(rows)} "
          f"ages, on CSF Dice at {better_csf}/{len(rows)}; generation {seconds:.1f} s for {len(rows)} ages x "
          f"{samples} samples, guidance {guidance:g} ({model.engines.name})")
    if json_out:
        json_out.write_text(json.dumps({"rows": rows, "spearman_rho": rho, "seconds": seconds}, indent=2))


if __name__ == "__main__":
    main()
