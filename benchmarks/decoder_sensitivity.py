"""Does the trained DVF decoder respond to its latent? A check on the synthetic cohort.

Encode held-out subjects (the autoencoder's posterior mean), decode each latent with the DVF decoder, warp the
template's soft ventricle map with that DVF and compare the volume with the subject's own. A decoder that has
learnt the morphology maps large-ventricle latents to large-ventricle atlases (Spearman rho near 1); one that
has learnt a single field returns about the same volume for every subject.

    python benchmarks/decoder_sensitivity.py --checkpoint runs/default --subjects 12
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--checkpoint", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--subjects", default=12, show_default=True, help="held-out subjects, spread over ages")
@click.option("--first-index", default=10_000, show_default=True, help="cohort index of the first held-out subject")
def main(checkpoint, subjects, first_index):
    import json

    import torch
    from scipy.stats import spearmanr

    from diffdef.generate import load_generation_modules
    from diffdef.geometry import warp_image
    from diffdef.models.autoencoder import AutoencoderConfig, build_autoencoder
    from diffdef.models.checkpoint import load_module
    from diffdef.synth.cohort import SyntheticCohort
    from diffdef.synth.fields import soft_volume_ml

    cfg = json.loads((checkpoint / "config.json").read_text())
    _, decoder = load_generation_modules(checkpoint)
    ae = load_module(checkpoint, "autoencoder", lambda c: build_autoencoder(AutoencoderConfig.from_dict(c))).eval()
    cohort = SyntheticCohort(cfg["data"]["grid"], seed=int(cfg["data"]["synthetic_seed"]) + 1)
    ventricles = cohort.template.torch("ventricle_prob")
    mean = decoder.latent_mean if decoder.latent_mean is not None else 0.0
    rows = []
    with torch.no_grad():
        for i in range(subjects):
            s = cohort.subject(first_index + i)
            latent = ae.encode(s.image)[0] - mean  # the decoder adds the population mean back
            dvf = decoder(latent)
            rows.append((s.age, s.ventricle_volume_ml, float(soft_volume_ml(warp_image(ventricles, dvf), cohort.grid))))
    rows.sort()
    print(f"{'age':>5} | {'subject mL':>10} | {'decoded mL':>10}")
    for age, true, decoded in rows:
        print(f"{age:5.1f} | {true:10.1f} | {decoded:10.1f}")
    rho = float(spearmanr([r[1] for r in rows], [r[2] for r in rows]).statistic)
    spread = max(r[2] for r in rows) - min(r[2] for r in rows)
    print(f"Spearman rho(subject volume, decoded volume) = {rho:.3f}; decoded volumes span {spread:.1f} mL "
          f"(subjects: {max(r[1] for r in rows) - min(r[1] for r in rows):.1f} mL); template "
          f"{float(soft_volume_ml(ventricles, cohort.grid)):.1f} mL")


if __name__ == "__main__":
    main()
