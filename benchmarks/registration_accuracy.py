"""Is the frozen registration network a usable L_morph signal? Two checks on the synthetic cohort, where the
true deformation of every subject is known.

1. Accuracy: register the template (moving) to held-out subjects (fixed) and compare the predicted DVF with the
   subject's true template->subject DVF inside the brain (mean end-point error, voxels), against the error of
   the zero field (= mean true displacement). A useful network has an error well below the zero field's.
2. L_morph landscape: for target ages, the mean squared displacement of the subjects nearest that age registered
   to the true atlases of several ages. L_morph can only pull the DVF decoder to the right atlas if each row's
   minimum sits at (or near) its target age.
3. The atlas L_morph aims at: the Gaussian-weighted mean (``ldm.neighbour_sigma`` on the normalised age) of the
   network's template -> subject fields over the run's training subjects, scored against the true atlas of each
   age like a generated one (``diffdef.synth.scoring``). To first order it is the minimiser of L_morph (and the
   target of the decoder warm-up), so it bounds what the DVF decoder can learn from this network. Scored as is
   and less the network's field for the template registered to itself (``ldm.reg_bias_correction``,
   :func:`diffdef.training.ldm.field_targets.identity_bias`); check 1 prints that field's size and both errors. Also
   scored: the same mean of the subjects' *true* fields, what a perfect network would give; where that loses to
   the template, the training sample itself (its subjects near that age), not the network, is what is off.

    python benchmarks/registration_accuracy.py --checkpoint runs/default
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--checkpoint", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--subjects", default=12, show_default=True, help="held-out subjects per check")
@click.option("--first-index", default=10_000, show_default=True, help="cohort index of the first held-out subject")
@click.option("--ages", default="30,50,70,85", show_default=True, help="target ages of the landscape")
@click.option("--mean-ages", default="30:85:5", show_default=True, help="ages of check 3; '' skips it")
def main(checkpoint, subjects, first_index, ages, mean_ages):
    import json

    import torch

    from diffdef.geometry import warp_image
    from diffdef.models.checkpoint import load_module
    from diffdef.models.registration import RegistrationConfig, RegistrationNet
    from diffdef.synth.cohort import SyntheticCohort
    from diffdef_runtime.conditions import parse_age_list

    cfg = json.loads((checkpoint / "config.json").read_text())
    net = load_module(checkpoint, "registration", lambda c: RegistrationNet(RegistrationConfig.from_dict(c))).eval()
    cohort = SyntheticCohort(cfg["data"]["grid"], seed=int(cfg["data"]["synthetic_seed"]) + 1)
    t1 = cohort.template.torch("t1")
    brain = cohort.template.torch("labels")[:, 0] > 0  # (1, D, H, W)

    held = [cohort.subject(first_index + i) for i in range(subjects)]
    fixed = torch.cat([s.image for s in held])
    true = torch.cat([s.dvf for s in held])
    with torch.no_grad():
        pred = net(t1.expand_as(fixed), fixed)
        bias = net(t1, t1)  # the identity pair's field (ideally zero)
    mask = brain.expand(len(held), -1, -1, -1)
    error = float((pred - true).norm(dim=1)[mask].mean())
    error_corrected = float((pred - bias - true).norm(dim=1)[mask].mean())
    zero = float(true.norm(dim=1)[mask].mean())
    print(f"accuracy on {subjects} held-out subjects: end-point error {error:.3f} voxels ({error_corrected:.3f} less "
          f"the identity-pair field, whose mean length is {float(bias.norm(dim=1)[brain].mean()):.3f}); zero field "
          f"{zero:.3f}; mean predicted displacement {float(pred.norm(dim=1)[mask].mean()):.3f}")

    targets = [float(a) for a in ages.split(",")]
    candidates = sorted({25.0, *targets, 40.0, 60.0, 80.0})
    atlases = {a: warp_image(t1, cohort.ground_truth_atlas(a).dvf) for a in candidates}
    pool = range(first_index, first_index + 40 * subjects)
    params = {i: cohort.parameters(i)["age"] for i in pool}
    print("L_morph (voxels^2) of the subjects nearest each target age, registered to the true atlas of age:")
    print("target | " + " | ".join(f"{a:6.0f}" for a in candidates) + " | argmin")
    for target in targets:
        nearest = sorted(pool, key=lambda i: abs(params[i] - target))[:subjects]
        moving = torch.cat([cohort.subject(i).image for i in nearest])
        with torch.no_grad():
            row = [float(net(moving, atlases[a].expand_as(moving)).pow(2).sum(1).mean()) for a in candidates]
        best = candidates[min(range(len(row)), key=row.__getitem__)]
        print(f"{target:6.0f} | " + " | ".join(f"{v:6.4f}" for v in row) + f" | {best:.0f}")
    if mean_ages:
        mean_field_atlases(net, cfg, [float(a) for a in parse_age_list(mean_ages)])


def mean_field_atlases(net, cfg: dict, ages: list[float]) -> None:
    """Check 3: the neighbourhood-mean field of the training subjects at each age, scored (printed table)."""
    import torch

    from diffdef.synth.cohort import SyntheticCohort
    from diffdef.synth.scoring import score_atlas, wins_over_template
    from diffdef.training.data import neighbour_weights
    from diffdef_runtime.conditions import CONDITION_RANGES

    cohort = SyntheticCohort(cfg["data"]["grid"], seed=int(cfg["data"]["synthetic_seed"]))  # the training cohort
    n = int(cfg["data"]["n_subjects"])
    lo, hi = CONDITION_RANGES["age"]
    norm = torch.tensor([[(cohort.parameters(i)["age"] - lo) / (hi - lo)] for i in range(n)])
    weights = torch.stack([neighbour_weights(norm, torch.tensor([(a - lo) / (hi - lo)]),
                                             float(cfg["ldm"]["neighbour_sigma"])) for a in ages])  # (ages, n)
    t1 = cohort.template.torch("t1")
    mean = torch.zeros(len(ages), 3, *t1.shape[2:])
    true_mean = torch.zeros_like(mean)  # the same neighbourhood mean of the subjects' true fields (known here)
    with torch.no_grad():
        for i in range(n):  # streamed: one subject's field at a time
            subject = cohort.subject(i)
            mean += weights[:, i].view(-1, 1, 1, 1, 1) * net(t1, subject.image)
            true_mean += weights[:, i].view(-1, 1, 1, 1, 1) * subject.dvf
        bias = net(t1, t1)  # weights sum to 1, so the corrected mean is the mean less the bias
    ageing = cohort.model
    rows = [score_atlas(ageing, a, mean[k:k + 1]) for k, a in enumerate(ages)]
    fixed_rows = [score_atlas(ageing, a, mean[k:k + 1] - bias) for k, a in enumerate(ages)]
    # What a perfect registration network would give: the cohort's own sample, not the network, limits this one.
    true_rows = [score_atlas(ageing, a, true_mean[k:k + 1]) for k, a in enumerate(ages)]
    print(f"atlas L_morph aims at (neighbourhood-mean field of {n} training subjects), scored as is / less the "
          "identity-pair field / with the subjects' true fields instead of the network's:")
    print("  age | vol mL            | true mL | Dice vent         | tmpl  | Dice CSF          | tmpl")
    for a, r, f, t in zip(ages, rows, fixed_rows, true_rows):
        print(f"{a:5.0f} | {r['volume_ml']:5.1f}/{f['volume_ml']:5.1f}/{t['volume_ml']:5.1f} | "
              f"{r['true_volume_ml']:7.1f} | {r['dice_vent']:.3f}/{f['dice_vent']:.3f}/{t['dice_vent']:.3f} | "
              f"{r['template_dice_vent']:.3f} | {r['dice_csf']:.3f}/{f['dice_csf']:.3f}/{t['dice_csf']:.3f} | "
              f"{r['template_dice_csf']:.3f}")
    for name, scored in (("as is", rows), ("less the identity-pair field", fixed_rows),
                         ("true fields (no network)", true_rows)):
        vent, csf = wins_over_template(scored)
        print(f"{name}: beats the template on ventricle Dice at {vent}/{len(scored)} ages, on CSF Dice at "
              f"{csf}/{len(scored)}")


if __name__ == "__main__":
    main()
