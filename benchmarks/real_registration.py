"""Can the field sources register the template to real, prepared subjects? The L_morph targets of a model trained
on real scans are neighbourhood means of template -> subject fields, so they can be no better than these.

For each subject of a prepared manifest (``diffdef-prepare``; default: its held-out split), the template is
registered to the subject's image by each source, and the template's lateral ventricles warped by that field are
scored against the subject's own segmentation (lateral-ventricle Dice, soft volume vs the label volume):

* ``identity``: the zero field (the plain template after the affine alignment);
* ``network``: the checkpoint's frozen registration network, less its field for the template registered to itself
  when the checkpoint's config says so (``ldm.reg_bias_correction``), as the ``ldm`` stage uses it;
* ``demons``: SimpleITK symmetric-forces demons on the images (``ldm.field_source = "demons"``), the registration
  of ``diffdef-eval``'s deformable protocol;
* ``labels``: the same demons between tissue images of the template's and the subject's label maps
  (``ldm.field_source = "labels"``). It registers to the very segmentation it is scored against, so its Dice
  is an upper bound of what the segmentations allow, not an independent accuracy.

    python benchmarks/real_registration.py --checkpoint runs/ixi --manifest data/ixi/manifest.csv --subjects 12
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click


@click.command()
@click.option("--checkpoint", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@click.option("--split", default="test", show_default=True, help="Manifest split to score ('' for every row).")
@click.option("--subjects", default=12, show_default=True, help="How many subjects (first rows of the split).")
@click.option("--label-scheme", type=click.Choice(["muse", "diffdef"]), default="muse", show_default=True)
def main(checkpoint, manifest, split, subjects, label_scheme):
    import numpy as np
    import torch

    from diffdef.data.tissues import tissue_masks
    from diffdef.evaluate.cohort import load_subject, read_cohort
    from diffdef.evaluate.deformable import displacement_voxels, register
    from diffdef.geometry import dice, warp_image
    from diffdef.template import load_template
    from diffdef.training.classical_fields import label_fields
    from diffdef.training.ldm.field_targets import identity_bias
    from diffdef.training.train import _load_reg

    cfg = json.loads((checkpoint / "config.json").read_text())
    net = _load_reg(checkpoint, cfg).eval()
    grid = cfg["data"]["grid"]
    rows = [s for s in read_cohort(manifest, load=False) if not split or s.split == split][:subjects]
    if not rows:
        raise click.UsageError(f"no subject of split {split!r} in {manifest}")
    rows = [load_subject(s, grid) for s in rows]
    template = load_template(grid)
    t1, vent = template.torch("t1"), template.torch("ventricle_prob")
    voxel_ml = template.grid.voxel_volume_ml
    with torch.no_grad():
        bias = identity_bias(net, t1).float() if cfg["ldm"]["reg_bias_correction"] else torch.zeros(1)

    def fields(image: np.ndarray, labels: np.ndarray) -> dict[str, torch.Tensor]:
        fixed = torch.from_numpy(image)[None, None]
        with torch.no_grad():
            network = net(t1, fixed).float() - bias
        demons = torch.from_numpy(displacement_voxels(register(image, template.t1.astype(np.float32))))[None]
        by_labels = label_fields(template.labels, torch.from_numpy(labels)[None], label_scheme)
        return {"identity": torch.zeros_like(network), "network": network, "demons": demons, "labels": by_labels}

    sources = ("identity", "network", "demons", "labels")
    scores = {name: {"dice": [], "volume": []} for name in sources}
    subject_ml = []
    tic = time.perf_counter()
    print(f"{'subject':>16} {'age':>5} {'subject mL':>10} | " + " | ".join(f"{n:>8} mL  Dice" for n in sources))
    for s in rows:
        truth = torch.from_numpy(tissue_masks(s.labels, label_scheme)["lateral_ventricles"])[None, None]
        subject_ml.append(float(truth.sum()) * voxel_ml)
        cells = []
        for name, dvf in fields(np.ascontiguousarray(s.image, dtype=np.float32), s.labels).items():
            warped = warp_image(vent, dvf)
            scores[name]["volume"].append(float(warped.sum()) * voxel_ml)
            scores[name]["dice"].append(float(dice(warped > 0.5, truth)[0]))
            cells.append(f"{scores[name]['volume'][-1]:8.1f}  {scores[name]['dice'][-1]:.3f}")
        print(f"{s.id:>16} {s.age:5.1f} {subject_ml[-1]:10.1f} | " + " | ".join(cells))
    print(f"{'mean':>16} {'':>5} {np.mean(subject_ml):10.1f} | "
          + " | ".join(f"{np.mean(scores[n]['volume']):8.1f}  {np.mean(scores[n]['dice']):.3f}" for n in sources))
    print(f"{len(rows)} subjects in {time.perf_counter() - tic:.0f} s; volume = soft volume of the warped template "
          "ventricle map, subject = its label volume")


if __name__ == "__main__":
    main()
