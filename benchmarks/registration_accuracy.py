"""Is the frozen registration network a usable L_morph signal? Two checks on the synthetic cohort, where the
true deformation of every subject is known.

1. Accuracy: register the template (moving) to held-out subjects (fixed) and compare the predicted DVF with the
   subject's true template->subject DVF inside the brain (mean end-point error, voxels), against the error of
   the zero field (= mean true displacement). A useful network has an error well below the zero field's.
2. L_morph landscape: for target ages, the mean squared displacement of the subjects nearest that age registered
   to the true atlases of several ages. L_morph can only pull the DVF decoder to the right atlas if each row's
   minimum sits at (or near) its target age.

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
def main(checkpoint, subjects, first_index, ages):
    import json

    import torch

    from diffdef.geometry import warp_image
    from diffdef.models.checkpoint import load_module
    from diffdef.models.registration import RegistrationConfig, RegistrationNet
    from diffdef.synth.cohort import SyntheticCohort

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
    mask = brain.expand(len(held), -1, -1, -1)
    error = float((pred - true).norm(dim=1)[mask].mean())
    zero = float(true.norm(dim=1)[mask].mean())
    print(f"accuracy on {subjects} held-out subjects: end-point error {error:.3f} voxels; zero field {zero:.3f}; "
          f"mean predicted displacement {float(pred.norm(dim=1)[mask].mean()):.3f}")

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


if __name__ == "__main__":
    main()
