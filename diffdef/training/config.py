"""Training configuration: one JSON-able tree, three presets, dotted CLI overrides.

A run's configuration is saved as ``config.json`` in its output folder; a resumed run must have the same
configuration (the training state records its hash).
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

PRESETS = ("tiny", "default", "paper")


def _models(preset: str) -> dict[str, Any]:
    from diffdef.models.autoencoder import autoencoder_preset
    from diffdef.models.denoiser import denoiser_preset
    from diffdef.models.registration import registration_preset

    return {
        "autoencoder": autoencoder_preset(preset).to_dict(),
        "registration": registration_preset(preset).to_dict(),
        "denoiser": denoiser_preset(preset).to_dict(),
    }


def _base() -> dict[str, Any]:
    return {
        "seed": 0,
        "data": {
            "source": "synthetic",  # "synthetic" (embedded default) or "manifest"
            "grid": "2mm",
            "n_subjects": 200,
            "synthetic_seed": 0,
            "manifest": None,  # CSV of template-aligned NIfTIs (source = "manifest"), e.g. diffdef-prepare's
            "split": "train",  # manifest rows of this split train (all rows when the manifest has no split column)
            "image_column": "path",
            "label_scheme": "muse",  # ids of the manifest's label maps (its "labels" column): "muse" or "diffdef"
            "conditions": ["age"],  # any subset of age, sex, ventricle_volume_ml
        },
        "schedule": {  # the paper's public code: scaled-linear betas 0.0015-0.0205, v-prediction
            "num_train_timesteps": 1000,
            "beta_schedule": "scaled_linear",
            "beta_start": 0.0015,
            "beta_end": 0.0205,
            "prediction_type": "v_prediction",
            "clip_sample": False,
        },
        "ae": {"steps": 300, "batch_size": 1, "lr": 2e-4, "kl_weight": 1e-8, "adv_weight": 0.01,
               "adv_start": 200, "disc_lr": 2e-4, "patch_size": None},
        # VoxelMorph's regularisation weights: 0.01 with MSE on [0, 1] images, 1.0 with (L)NCC.
        # synthetic_fields > 0: pairs warped by a bank of that many known fields (+ their inverses; 2 x 3 x D x H x W
        # floats: 550 MB on the 2 mm grid), + supervised end-point error; template_fixed_prob is then unused
        "reg": {"steps": 300, "batch_size": 1, "lr": 1e-3, "similarity": "mse", "smooth_weight": 0.01,
                "template_fixed_prob": 0.3, "synthetic_fields": 0, "supervised_weight": 1.0, "lr_schedule": "constant"},
        "ldm": {
            "unet_steps": 2000,  # L_diff only, before the DVF decoder starts
            "joint_steps": 150,  # L_diff on the UNet + alpha*L_morph + beta*bending on the DVF decoder
            "batch_size": 16,
            "lr": 2e-4,
            "dvf_lr": 2e-4,
            "condition_dropout": 0.1,
            "alpha": 1.0,
            "beta": 0.5,
            "neighbours": 4,  # N; the paper uses 15
            "neighbour_sigma": 0.05,  # Gaussian width on the normalised condition
            "sample_steps": 20,  # DDIM steps used to draw the latent for L_morph
            "morph_grad_to_unet": False,
            "joint_fit_weight": 0.0,  # gamma: joint-phase DVF also fitted to the exact target of its condition
            "decoder_warmup_steps": 0,  # last L_diff steps also fit the decoder to neighbourhood-mean reg-net fields
            "warmup_targets": "sampled",  # "exact": every subject's field held in memory; "sampled": N per step
            # registration fields relative to the network's field for an identical pair (stage_ldm.identity_bias)
            "reg_bias_correction": False,
            # where the exact targets' fields come from: "network" (the frozen registration network), "demons" or
            # "labels" (SimpleITK demons on the images / on the segmentations; training/classical_fields.py)
            "field_source": "network",
            # refine each field of the exact bank by image matching on the grid / reg_refine_down
            # (training/refine_fields.py; measured, not adopted: docs/RESULTS.md)
            "reg_refine_steps": 0,
            "reg_refine_lr": 0.05,
            "reg_refine_smooth_weight": 0.1,
            "reg_refine_down": 2,
            "diffeomorphic": False,
            # what the DVF decoder is (diffdef/models/dvf_decoder.py): "decoder" (the paper: the copied AE decoder
            # with a 3-channel head, trained at dvf_lr), "basis" (the low-rank field basis alone) or "decoder+basis"
            "dvf_decoder": "decoder",
            # Low-rank field basis (not in the paper; diffdef/models/field_basis.py says why): K = basis_rank
            # coefficients read from the latent, basis fields on the image grid / basis_down, own learning rates
            "basis_rank": 0,
            "basis_down": 2,
            "basis_lr": 3e-2,  # voxels per Adam step, roughly
            "basis_coef_lr": 3e-3,
            # before the warm-up, fit the basis alone (cheap) to the exact targets (training/basis_prefit.py)
            "basis_prefit_steps": 0,
            "basis_prefit_batch": 8,
            "basis_prefit_lr": 1e-2,  # the pre-fit's own rates (fields, coefficients)
            "basis_prefit_coef_lr": 1e-3,
            "basis_prefit_samples": 0,  # K UNet-drawn latents per training subject added to the pre-fit's inputs
            "integration_steps": 7,
            "integration_down": 1,  # integrate the velocity on the image grid / this factor
            "latent_scale": None,  # None: 1 / std of the training latents (after centring)
            "latent_centre": True,  # subtract the population-mean latent (an improvement over the paper's code)
            "lr_schedule": "cosine",  # "constant" or "cosine" (to 0.1 x lr; UNet over the stage, DVF over its phase)
        },
        "run": {"device": "auto", "mixed_precision": False, "compile": False, "checkpoint_every": 50,
                "grad_accumulation": 1, "num_threads": 0},
    }


def preset_config(name: str) -> dict[str, Any]:
    """The configuration tree of preset ``tiny`` (tests, seconds), ``default`` (2 mm, 2-core CPU) or ``paper``."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {PRESETS}")
    cfg = _base()
    cfg["preset"] = name
    cfg["models"] = _models(name)
    if name == "default":
        # Budget: `diffdef-train all` in <= 30 min on a 2-core CPU (measured; see docs/RESULTS.md).
        # seed 1: with seed 0 the registration stage ended with a network that barely registers on a 2-core Xeon
        # with AVX-512/AMX (2026-12-01; docs/RESULTS.md), though not on the machine measured before.
        cfg["seed"] = 1
        cfg["data"].update(n_subjects=120)
        cfg["ae"].update(steps=200, batch_size=2, patch_size=[48, 48, 48], adv_start=150)
        cfg["reg"].update(steps=1200, batch_size=2, synthetic_fields=32, lr_schedule="cosine")
        # No joint phase: the DVF decoder's basis is pre-fitted at the last L_diff step (decoder_warmup_steps=1)
        # to the exact neighbourhood-mean targets (L_morph's first-order minimiser) from the encoded latents and 2
        # latents per subject drawn by the UNet as it is then (599 of 600 steps; only that step's own L_diff update
        # and one batch-1 warm-up update of the basis at basis_lr / basis_coef_lr follow the pre-fit). Measured on
        # 2026-12-02 (docs/RESULTS.md): 90 joint steps after it lost age 30 (ventricle and CSF Dice), both from
        # L_morph on the basis and from the UNet's further L_diff steps moving the drawn latents away from those
        # the basis was fitted to.
        cfg["ldm"].update(unet_steps=600, joint_steps=0, batch_size=16, sample_steps=10, neighbours=3, lr=5e-4,
                          dvf_decoder="basis", decoder_warmup_steps=1, basis_rank=4, diffeomorphic=True,
                          warmup_targets="exact", basis_lr=1e-3, basis_coef_lr=1e-4, integration_down=2,
                          reg_bias_correction=True, basis_prefit_steps=1500, basis_prefit_samples=2)
    elif name == "tiny":
        cfg["data"].update(grid="4mm", n_subjects=12, conditions=["age", "sex"])
        cfg["ae"].update(steps=6, batch_size=2, adv_start=3)
        cfg["reg"].update(steps=6, batch_size=2, synthetic_fields=2)
        cfg["ldm"].update(unet_steps=6, joint_steps=4, batch_size=4, neighbours=2, sample_steps=3,
                          decoder_warmup_steps=2, dvf_decoder="decoder+basis", basis_rank=2, warmup_targets="exact",
                          reg_bias_correction=True, basis_prefit_steps=5, basis_prefit_samples=1,
                          joint_fit_weight=1.0)  # off in default (measured: docs/RESULTS.md)
        cfg["run"].update(checkpoint_every=2)
    elif name == "paper":
        cfg["data"].update(grid="paper", n_subjects=2000)
        cfg["ae"].update(steps=100_000, batch_size=2, lr=1e-4, adv_start=10_000)
        cfg["reg"].update(steps=50_000, batch_size=2, similarity="lncc", smooth_weight=1.0)
        cfg["ldm"].update(unet_steps=50_000, joint_steps=50_000, batch_size=8, neighbours=15, lr=2.5e-5,
                          dvf_lr=1e-5, latent_scale=0.3, latent_centre=False, lr_schedule="constant")
        cfg["run"].update(mixed_precision=True, checkpoint_every=1000)
    return cfg


def manifest_overrides(manifest: str | Path) -> list[str]:
    """``--data MANIFEST`` as overrides: the manifest route, its images' grid, conditions age (+ sex when the
    manifest has a sex column), and the exact targets' field source: ``labels`` (demons on the segmentations) when
    every row has a label map, else ``demons`` (the registration network does not register real scans:
    ``diffdef/training/classical_fields.py``). Applied before the user's own ``--set``, which can change any."""
    import nibabel as nib

    from diffdef.data.manifest import manifest_columns, read_manifest
    from diffdef_runtime.grid import GRIDS

    path = Path(manifest).expanduser().absolute()
    columns = {c.strip().casefold() for c in manifest_columns(path)}
    conditions = ["age", "sex"] if "sex" in columns else ["age"]
    has_labels = "labels" in columns
    table = read_manifest(path, conditions=("age",), check_files=False, path_columns=("labels",) if has_labels else ())
    first = table.rows[0]["path"]
    field_source = "labels" if has_labels and all(row["labels"] for row in table.rows) else "demons"
    if not Path(first).is_file():
        raise FileNotFoundError(f"image file not found: {first} (first row of {path})")
    shape = tuple(nib.as_closest_canonical(nib.load(first)).shape[:3])
    grid = next((name for name, g in GRIDS.items() if tuple(g.shape) == shape), None)
    if grid is None:
        raise ValueError(f"{path}: its first image {first} is not on a template grid (shape {shape}); prepare the "
                         "scans with diffdef-prepare first")
    return ["data.source=manifest", f"data.manifest={json.dumps(str(path))}", f"data.grid={json.dumps(grid)}",
            f"data.conditions={json.dumps(conditions)}", f"ldm.field_source={json.dumps(field_source)}"]


def load_config(preset: str, config_file: str | Path | None, overrides: list[str],
                data_manifest: str | Path | None = None) -> dict[str, Any]:
    """Preset, then ``--data`` (:func:`manifest_overrides`), then a JSON config file (partial trees merge over
    the preset), then ``a.b=value`` overrides."""
    cfg = preset_config(preset)
    if data_manifest is not None:
        for item in manifest_overrides(data_manifest):
            apply_override(cfg, item)
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            file_cfg = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"config file {path} is not valid JSON: {err}") from err
        _merge(cfg, file_cfg, str(path))
    for item in overrides:
        apply_override(cfg, item)
    return cfg


def _merge(base: dict, update: dict, origin: str, prefix: str = "") -> None:
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            raise ValueError(f"{origin}: unknown configuration key {dotted!r}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ValueError(f"{origin}: {dotted!r} must be an object")
            _merge(base[key], value, origin, dotted + ".")
        else:
            base[key] = value


def apply_override(cfg: dict[str, Any], item: str) -> None:
    """Apply ``section.key=value`` (value parsed as JSON when it parses, else kept as a string)."""
    if "=" not in item:
        raise ValueError(f"override {item!r} must look like section.key=value")
    dotted, raw = item.split("=", 1)
    keys = dotted.strip().split(".")
    node = cfg
    for key in keys[:-1]:
        if key not in node or not isinstance(node[key], dict):
            raise ValueError(f"override {item!r}: unknown section {key!r}")
        node = node[key]
    if keys[-1] not in node:
        raise ValueError(f"override {item!r}: unknown key {keys[-1]!r} (known: {sorted(node)})")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    node[keys[-1]] = value


def config_hash(cfg: dict[str, Any], section: str | None = None) -> str:
    """sha256 of the canonical JSON of the config (or of one stage's view of it)."""
    tree = cfg if section is None else stage_view(cfg, section)
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:16]


def stage_view(cfg: dict[str, Any], stage: str) -> dict[str, Any]:
    """The part of the configuration that determines one stage's result (resume refuses a change in it)."""
    view = {"seed": cfg["seed"], "data": cfg["data"], "stage": copy.deepcopy(cfg[stage])}
    if stage in ("ae", "ldm"):
        view["autoencoder"] = cfg["models"]["autoencoder"]
    if stage in ("reg", "ldm"):
        view["registration"] = cfg["models"]["registration"]
    if stage == "ldm":
        view["denoiser"] = cfg["models"]["denoiser"]
        view["schedule"] = cfg["schedule"]
    return view
