"""What a *perfect* registration network would let Diff-Def learn, for growing training sets.

L_morph's first-order minimiser (and the target of the ``default`` preset's DVF decoder) is the Gaussian-weighted
neighbourhood mean of the training subjects' template -> subject fields (``ldm.neighbour_sigma`` on the normalised
age). On the synthetic cohort every subject's true field is known, so that mean can be formed with no network at
all and scored against the true atlas of each age like a generated atlas (``diffdef.synth.scoring``). Two means
are formed over the first ``n`` subjects of the cohort, for each ``n`` given:

- ``subject fields``: the subjects' true fields (the ageing field of their age and ventricle offset, composed with
  their individual deformation), what a perfect network would return;
- ``ageing fields``: the ageing field of each subject's age and ventricle offset alone (no individual
  deformation), which separates the blur that averaging individual deformations adds from the sample's offsets.

Then, unless ``--limit-nodes 0``, the population limit of the ageing-field mean: the mean of the ageing model's fields
at the target age over the cohort's whole offset distribution (normal ventricle log offset with sd
``VENTRICLE_LOG_SD``, Gauss-Hermite quadrature, times the two sexes' offsets), i.e. infinitely many subjects, a
perfect network and no age window. It shows the bias of averaging displacement fields itself, which no training
set size removes.

Also printed per age: the neighbourhood's weighted mean ventricle log offset (sex offset included; the true atlas
has 0) and its standard error ``sd / sqrt(n_eff)`` (``sd``: the offset's, sex included) with Kish's effective size
``n_eff = 1 / sum(w^2)``; the weighted mean of the subjects' own ventricle volumes; and the ventricle volume of the
ageing model at the neighbourhood's weighted mean age and offset. Comparing those with the mean fields' volumes
shows what averaging displacement fields itself does. Where a row loses to the template, no network trained on
that sample could be expected to win there by faithfully fitting L_morph.

    python benchmarks/true_field_targets.py --sizes 120,360

Cost: each subject of the largest size is made once (its ageing field comes from the same integration) and added
to every size's mean (streamed, one subject in memory at a time); the population limit integrates 2 x nodes
ageing fields per age. Measured on a 2-core CPU: docs/RESULTS.md.
"""

from __future__ import annotations

import click


def neighbourhood_targets(cohort, sizes: list[int], ages: list[float], sigma: float, progress: bool = False):
    """Neighbourhood-mean fields of the first ``n`` subjects of ``cohort`` for each ``n`` in ``sizes``.

    Args:
        cohort: a :class:`diffdef.synth.cohort.SyntheticCohort`.
        sizes: training-set sizes (each >= 1).
        ages: target ages, years.
        sigma: neighbourhood width on the normalised age (``ldm.neighbour_sigma``).
    Returns:
        ``(means, stats)``: ``means[(kind, n)]`` is (len(ages), 3, D, H, W) in voxels, ``kind`` one of
        ``"subject"`` / ``"ageing"``; ``stats[n]`` is a list per age of dicts with the neighbourhood's weighted
        ``offset`` (mean ventricle log offset), its standard error ``se``, ``n_eff``, ``age`` (mean, years) and
        ``volume_ml`` (mean of the subjects' own ventricle volumes).
    """
    import torch
    from tqdm import tqdm

    from diffdef.synth.cohort import VENTRICLE_LOG_SD, sex_log_offset
    from diffdef.training.data import SYNTHETIC_RANGES, neighbour_weights

    if not sizes or min(sizes) < 1:
        raise ValueError(f"sizes must be positive subject counts, got {sizes}")
    lo, hi = SYNTHETIC_RANGES["age"]
    largest = max(sizes)
    params = [cohort.parameters(i) for i in range(largest)]
    norm = torch.tensor([[(p["age"] - lo) / (hi - lo)] for p in params])
    offsets = torch.tensor([p["ventricle_log_offset"] + sex_log_offset(p["sex"]) for p in params])
    targets = [torch.tensor([(a - lo) / (hi - lo)]) for a in ages]
    weights = {n: torch.stack([neighbour_weights(norm[:n], t, sigma) for t in targets]) for n in sizes}  # (ages, n)
    shape = (len(ages), 3, *cohort.grid.shape)
    means = {(kind, n): torch.zeros(shape) for kind in ("subject", "ageing") for n in sizes}
    volumes = torch.zeros(largest)
    with torch.no_grad():
        for i in tqdm(range(largest), desc="subjects", disable=not progress):
            subject, ageing_field = cohort.subject_and_ageing_field(i)
            volumes[i] = subject.ventricle_volume_ml
            fields_of = {"subject": subject.dvf, "ageing": ageing_field}
            for (kind, n), mean in means.items():
                if i < n:
                    mean += weights[n][:, i].view(-1, 1, 1, 1, 1) * fields_of[kind]
    ages_years = torch.tensor([p["age"] for p in params])
    offset_sd = (VENTRICLE_LOG_SD**2 + sex_log_offset("M") ** 2) ** 0.5  # normal offset + sex at +-half its offset
    stats = {}
    for n, w in weights.items():
        n_eff = 1.0 / (w**2).sum(1)
        stats[n] = [dict(offset=float(m), se=offset_sd / float(e) ** 0.5, n_eff=float(e), age=float(a),
                         volume_ml=float(v))
                    for m, e, a, v in zip(w @ offsets[:n], n_eff, w @ ages_years[:n], w @ volumes[:n])]
    return means, stats


def population_limit_targets(model, ages: list[float], nodes: int = 9):
    """The mean ageing field over the cohort's offset distribution at each age (see the module docstring).

    Args:
        model: a :class:`diffdef.synth.ageing.AgeingModel`.
        ages: years.
        nodes: Gauss-Hermite nodes over the normal ventricle log offset (each used with both sexes' offsets).
    Returns:
        (len(ages), 3, D, H, W), voxels of the model's template grid.
    """
    import numpy as np
    import torch

    from diffdef.synth.cohort import VENTRICLE_LOG_SD, sex_log_offset

    if nodes < 1:
        raise ValueError(f"nodes must be >= 1, got {nodes}")
    # Gauss-Hermite: integral of exp(-x^2) f(x) = sum w f(x), so E[f(z)] = sum w f(sqrt(2) sd x) / sqrt(pi)
    x, w = np.polynomial.hermite.hermgauss(nodes)
    offsets = np.sqrt(2.0) * VENTRICLE_LOG_SD * x
    weights = w / np.sqrt(np.pi)
    out = torch.zeros(len(ages), 3, *model.grid.shape)
    with torch.no_grad():
        for k, age in enumerate(ages):
            for z, wz in zip(offsets, weights):
                for sex in ("F", "M"):
                    out[k] += 0.5 * float(wz) * model.field(age, float(z) + sex_log_offset(sex))[0]
    return out


@click.command()
@click.option("--sizes", default="120,360", show_default=True, help="training-set sizes (first n subjects)")
@click.option("--ages", default="30:85:5", show_default=True, help="target ages, a list or start:stop:step")
@click.option("--sigma", default=0.05, show_default=True, help="neighbourhood width on the normalised age")
@click.option("--grid", default="2mm", show_default=True)
@click.option("--synthetic-seed", default=0, show_default=True, help="the cohort's seed (data.synthetic_seed)")
@click.option("--limit-nodes", default=9, show_default=True,
              help="quadrature nodes of the population limit; 0 skips it")
def main(sizes, ages, sigma, grid, synthetic_seed, limit_nodes):
    from diffdef.synth.cohort import SyntheticCohort
    from diffdef.synth.scoring import score_atlas, wins_over_template
    from diffdef_runtime.conditions import parse_age_list

    size_list = sorted({int(s) for s in sizes.split(",")})
    age_list = [float(a) for a in parse_age_list(ages)]
    cohort = SyntheticCohort(grid, seed=synthetic_seed)
    means, stats = neighbourhood_targets(cohort, size_list, age_list, sigma, progress=True)
    ageing = cohort.model
    for n in size_list:
        print(f"\nneighbourhood means over the first {n} subjects (sigma {sigma:g}), scored against the true atlas; "
              "vol and Dice: subject fields / ageing fields alone")
        print("  age | log offset (SE, n_eff) | subjects' mean mL | model at mean age, offset mL | true mL | "
              "vol mL      | Dice vent   | tmpl  | Dice CSF    | tmpl")
        scored = {kind: [score_atlas(ageing, a, means[(kind, n)][k:k + 1]) for k, a in enumerate(age_list)]
                  for kind in ("subject", "ageing")}
        for k, a in enumerate(age_list):
            s, g = scored["subject"][k], scored["ageing"][k]
            st = stats[n][k]
            at_mean = ageing.ground_truth_atlas(st["age"], st["offset"]).ventricle_volume_ml
            print(f"{a:5.0f} | {st['offset']:+.3f} ({st['se']:.3f}, {st['n_eff']:5.1f})   | {st['volume_ml']:17.1f} | "
                  f"{at_mean:28.1f} | {s['true_volume_ml']:7.1f} | "
                  f"{s['volume_ml']:5.1f}/{g['volume_ml']:5.1f} | {s['dice_vent']:.3f}/{g['dice_vent']:.3f} | "
                  f"{s['template_dice_vent']:.3f} | {s['dice_csf']:.3f}/{g['dice_csf']:.3f} | "
                  f"{s['template_dice_csf']:.3f}")
        for kind, rows in scored.items():
            vent, csf = wins_over_template(rows)
            print(f"n={n}, {kind} fields: beat the template on ventricle Dice at {vent}/{len(rows)} ages, on CSF "
                  f"Dice at {csf}/{len(rows)}")
    if limit_nodes:
        limit = population_limit_targets(ageing, age_list, limit_nodes)
        rows = [score_atlas(ageing, a, limit[k:k + 1]) for k, a in enumerate(age_list)]
        print(f"\npopulation limit (mean ageing field over the offset distribution, {limit_nodes} nodes x 2 sexes; "
              "no sample, no network, no age window)")
        print("  age | true mL | vol mL | Dice vent | tmpl  | Dice CSF | tmpl")
        for a, r in zip(age_list, rows):
            print(f"{a:5.0f} | {r['true_volume_ml']:7.1f} | {r['volume_ml']:6.1f} | {r['dice_vent']:9.3f} | "
                  f"{r['template_dice_vent']:.3f} | {r['dice_csf']:8.3f} | {r['template_dice_csf']:.3f}")
        vent, csf = wins_over_template(rows)
        print(f"population limit: beats the template on ventricle Dice at {vent}/{len(rows)} ages, on CSF Dice at "
              f"{csf}/{len(rows)}")


if __name__ == "__main__":
    main()
