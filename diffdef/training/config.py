"""Training configuration: one typed section per stage, three presets, dotted CLI overrides.

Each section is a dataclass whose defaults are the ``default`` preset; ``tiny`` and ``paper`` are short lists of
differences. The tree the stages read is plain JSON (``config.json`` in the output folder); every value is checked
against its field's type when the tree is loaded, so an unknown key or a wrong type is an error naming the key.
A resumed run must have the same configuration (the training state records each stage's hash).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any

from diffdef_runtime.schedulers import ScheduleConfig  # the noise schedule section is the runtime's own config

PRESETS = ("tiny", "default", "paper")


@dataclasses.dataclass
class DataSection:
    source: str = "synthetic"  # "synthetic" (embedded default) or "manifest"
    grid: str = "2mm"
    n_subjects: int = 120  # synthetic cohort size
    synthetic_seed: int = 0
    synthetic_dir: str | None = None  # read the synthetic cohort from this diffdef-synth folder instead of generating it
    manifest: str | None = None  # CSV of template-aligned NIfTIs (source = "manifest"), e.g. diffdef-prepare's
    split: str | None = "train"  # manifest rows of this split train (all rows when the manifest has no split column)
    image_column: str = "path"
    label_scheme: str = "muse"  # ids of the manifest's label maps (its "labels" column): "muse" or "diffdef"
    conditions: list[str] = dataclasses.field(default_factory=lambda: ["age"])  # subset of age, sex, ventricle_volume_ml


@dataclasses.dataclass
class AESection:
    steps: int = 200
    batch_size: int = 2
    lr: float = 2e-4
    kl_weight: float = 1e-8
    adv_weight: float = 0.01
    adv_start: int = 150
    disc_lr: float = 2e-4
    patch_size: list[int] | None = dataclasses.field(default_factory=lambda: [48, 48, 48])  # None = whole images


@dataclasses.dataclass
class RegSection:
    """VoxelMorph's regularisation weights: 0.01 with MSE on [0, 1] images, 1.0 with (L)NCC. ``synthetic_fields``
    > 0: pairs warped by a bank of that many known fields (+ inverses; 550 MB on the 2 mm grid for 32) and a
    supervised end-point error; ``template_fixed_prob`` is then unused."""
    steps: int = 1200
    batch_size: int = 2
    lr: float = 1e-3
    similarity: str = "mse"
    smooth_weight: float = 0.01
    template_fixed_prob: float = 0.3
    synthetic_fields: int = 32
    supervised_weight: float = 1.0
    lr_schedule: str = "cosine"


@dataclasses.dataclass
class LDMSection:
    """The diffusion model and the DVF decoder (``diffdef.training.ldm`` says what each part does)."""
    unet_steps: int = 600  # L_diff only, before the DVF decoder's joint phase
    joint_steps: int = 0  # L_diff on the UNet + alpha*L_morph + beta*bending on the DVF decoder (docs/METHOD.md)
    batch_size: int = 16
    lr: float = 5e-4
    dvf_lr: float = 2e-4  # the copied AE decoder's rate (dvf_decoder "decoder" or "decoder+basis")
    condition_dropout: float = 0.1
    alpha: float = 1.0
    beta: float = 0.5
    neighbours: int = 3  # N; the paper uses 15
    neighbour_sigma: float = 0.05  # Gaussian width on the normalised condition
    sample_steps: int = 10  # DDIM steps used to draw latents for L_morph and the pre-fit
    # the last W L_diff steps also fit the decoder to the exact neighbourhood-mean fields
    decoder_warmup_steps: int = 0
    reg_bias_correction: bool = True  # fields relative to the network's identical-pair field (ldm.field_targets.identity_bias)
    # where the exact targets' fields come from: "network" (the frozen registration network), "demons" or
    # "labels" (SimpleITK demons on the images / on the segmentations; training/classical_fields.py)
    field_source: str = "network"
    diffeomorphic: bool = True
    # what the DVF decoder is (diffdef/models/dvf_decoder.py): "decoder" (the paper: the copied AE decoder with a
    # 3-channel head), "basis" (the low-rank field basis alone) or "decoder+basis"
    dvf_decoder: str = "basis"
    # the field basis (not in the paper; diffdef/models/field_basis.py): K = basis_rank coefficients read from the
    # latent, basis fields on the image grid / basis_down, own learning rates
    basis_rank: int = 4
    basis_down: int = 2
    basis_lr: float = 1e-3
    basis_coef_lr: float = 1e-4
    basis_prefit_steps: int = 1500  # fit the basis alone to the exact targets first (training/basis_prefit.py)
    basis_prefit_batch: int = 8
    basis_prefit_lr: float = 1e-2  # the pre-fit's own rates (fields, coefficients)
    basis_prefit_coef_lr: float = 1e-3
    basis_prefit_samples: int = 2  # K UNet-drawn latents per training subject added to the pre-fit's inputs
    integration_steps: int = 7
    integration_down: int = 2  # integrate the velocity on the image grid / this factor
    latent_scale: float | None = None  # None: 1 / std of the training latents (after centring)
    latent_centre: bool = True  # subtract the population-mean latent (an improvement over the paper's code)
    lr_schedule: str = "cosine"  # "constant" or "cosine" (to 0.1 x lr; UNet over the stage, DVF over its phase)


@dataclasses.dataclass
class RunSection:
    device: str = "auto"
    mixed_precision: bool = False
    compile: bool = False
    checkpoint_every: int = 50
    grad_accumulation: int = 1
    num_threads: int = 0  # 0: torch's default


SECTIONS: dict[str, type] = {"data": DataSection, "schedule": ScheduleConfig, "ae": AESection, "reg": RegSection,
                             "ldm": LDMSection, "run": RunSection}
DEFAULT_SEED = 1  # with seed 0 the registration stage ended with a network that barely registers (docs/RESULTS.md)

# Each preset as its differences from ``default`` (the sections' defaults).
PRESET_CHANGES: dict[str, dict[str, Any]] = {
    "default": {},
    "tiny": {  # tests, seconds: 4 mm grid, every phase a few steps
        "seed": 0,
        "data": {"grid": "4mm", "n_subjects": 12, "conditions": ["age", "sex"]},
        "ae": {"steps": 6, "adv_start": 3, "patch_size": None},
        "reg": {"steps": 6, "synthetic_fields": 2, "lr_schedule": "constant"},
        "ldm": {"unet_steps": 6, "joint_steps": 4, "batch_size": 4, "lr": 2e-4, "neighbours": 2, "sample_steps": 3,
                "decoder_warmup_steps": 2, "dvf_decoder": "decoder+basis", "basis_rank": 2, "diffeomorphic": False,
                "basis_lr": 3e-2, "basis_coef_lr": 3e-3, "basis_prefit_steps": 5, "basis_prefit_samples": 1,
                "integration_down": 1},
        "run": {"checkpoint_every": 2},
    },
    "paper": {  # the paper's sizes and its public code's settings, for a GPU
        "seed": 0,
        "data": {"grid": "paper", "n_subjects": 2000},
        "ae": {"steps": 100_000, "lr": 1e-4, "adv_start": 10_000, "patch_size": None},
        "reg": {"steps": 50_000, "similarity": "lncc", "smooth_weight": 1.0, "synthetic_fields": 0,
                "lr_schedule": "constant"},
        "ldm": {"unet_steps": 50_000, "joint_steps": 50_000, "batch_size": 8, "lr": 2.5e-5, "dvf_lr": 1e-5,
                "neighbours": 15, "sample_steps": 20, "reg_bias_correction": False,
                "diffeomorphic": False, "dvf_decoder": "decoder", "basis_rank": 0, "basis_lr": 3e-2,
                "basis_coef_lr": 3e-3, "basis_prefit_steps": 0, "basis_prefit_samples": 0, "integration_down": 1,
                "latent_scale": 0.3, "latent_centre": False, "lr_schedule": "constant"},
        "run": {"mixed_precision": True, "checkpoint_every": 1000},
    },
}


def _models(preset: str) -> dict[str, Any]:
    from diffdef.models.autoencoder import autoencoder_preset
    from diffdef.models.denoiser import denoiser_preset
    from diffdef.models.registration import registration_preset

    return {
        "autoencoder": autoencoder_preset(preset).to_dict(),
        "registration": registration_preset(preset).to_dict(),
        "denoiser": denoiser_preset(preset).to_dict(),
    }


def preset_config(name: str) -> dict[str, Any]:
    """The configuration tree of preset ``tiny`` (tests, seconds), ``default`` (2 mm, 2-core CPU) or ``paper``."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {PRESETS}")
    cfg: dict[str, Any] = {"seed": DEFAULT_SEED, "preset": name, "models": _models(name)}
    cfg.update({section: dataclasses.asdict(cls()) for section, cls in SECTIONS.items()})
    _merge(cfg, copy.deepcopy(PRESET_CHANGES[name]), f"preset {name}")
    return cfg


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a field annotation (int for float is fine; bool is not an int)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, hint)


def check_config(cfg: dict[str, Any], origin: str = "configuration") -> None:
    """Check every section's keys and value types against its dataclass; errors name the dotted key."""
    if not isinstance(cfg.get("seed"), int) or isinstance(cfg.get("seed"), bool):
        raise ValueError(f"{origin}: 'seed' must be an int, got {cfg.get('seed')!r}")
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        values = cfg[section]
        for key, value in values.items():
            if key not in hints:
                raise ValueError(f"{origin}: unknown configuration key '{section}.{key}' (known: {sorted(hints)})")
            if not _type_ok(value, hints[key]):
                raise ValueError(f"{origin}: '{section}.{key}' must be {_type_name(hints[key])}, got {value!r}")
        missing = sorted(set(hints) - set(values))
        if missing:
            raise ValueError(f"{origin}: section '{section}' lacks {missing}")


def _type_name(hint: Any) -> str:
    """``int``, ``list[str]``, ``float | None``: the annotation as written."""
    if isinstance(hint, type) and typing.get_origin(hint) is None:
        return hint.__name__
    return str(hint).replace("typing.", "").replace("NoneType", "None")


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
        check_config(cfg, str(path))
    for item in overrides:
        apply_override(cfg, item)
    check_config(cfg, "--set" if overrides else "preset")
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
    # where the synthetic cohort is read from does not change it (the same data, bit for bit)
    data = {k: v for k, v in cfg["data"].items() if k != "synthetic_dir"}
    view = {"seed": cfg["seed"], "data": data, "stage": copy.deepcopy(cfg[stage])}
    if stage in ("ae", "ldm"):
        view["autoencoder"] = cfg["models"]["autoencoder"]
    if stage in ("reg", "ldm"):
        view["registration"] = cfg["models"]["registration"]
    if stage == "ldm":
        view["denoiser"] = cfg["models"]["denoiser"]
        view["schedule"] = cfg["schedule"]
    return view
