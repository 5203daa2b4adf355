"""Run the training stages in order into one output folder (which is also the model checkpoint).

Layout of ``out_dir``:
    config.json                      the full training configuration
    autoencoder / registration / denoiser / dvf_decoder .safetensors + .json   final weights (strict load)
    model.json                       what generation needs: grid, conditions, schedule, latent scale
    progress.json                    stages completed
    state/<stage>.safetensors        resumable training state of the stage in progress
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from diffdef.models.autoencoder import AutoencoderConfig, build_autoencoder
from diffdef.models.checkpoint import load_module, save_module, write_model_json
from diffdef.models.registration import RegistrationConfig, RegistrationNet
from diffdef.training.config import config_hash
from diffdef.training.data import TrainingData, load_training_data
from diffdef.training.distributed import DistContext, barrier, init_distributed, shutdown
from diffdef.training.loop import run_stage, step_seed
from diffdef.training.state import state_path
from diffdef_runtime import atomic

#: ``default_steps`` written into model.json: the generation's DDIM step count, chosen from
#: ``benchmarks/sampling_steps.py`` on the default model (README, "Sampling steps").
GENERATION_STEPS = 20

log = logging.getLogger(__name__)

STAGES = ("ae", "reg", "ldm")


class TrainingDataError(ValueError):
    """The training data cannot be loaded (a manifest row's file is missing, NaN, off the grid, ...); raised
    before anything is written to the output folder."""


def _progress(out_dir: Path) -> list[str]:
    path = out_dir / "progress.json"
    return json.loads(path.read_text())["completed"] if path.exists() else []


def _mark_done(out_dir: Path, stage: str) -> None:
    done = _progress(out_dir)
    if stage not in done:
        done.append(stage)
    atomic.write_json(out_dir / "progress.json", {"completed": done})


def _load_ae(out_dir: Path, cfg: dict[str, Any]) -> torch.nn.Module:
    ae_cfg = AutoencoderConfig.from_dict(cfg["models"]["autoencoder"])
    return load_module(out_dir, "autoencoder", lambda c: build_autoencoder(AutoencoderConfig.from_dict(c)),
                       expected_config=ae_cfg.to_dict())


def _load_reg(out_dir: Path, cfg: dict[str, Any]) -> torch.nn.Module:
    reg_cfg = RegistrationConfig.from_dict(cfg["models"]["registration"])
    return load_module(out_dir, "registration", lambda c: RegistrationNet(RegistrationConfig.from_dict(c)),
                       expected_config=reg_cfg.to_dict())


def _run_one(stage: str, cfg: dict[str, Any], data: TrainingData, out_dir: Path, ctx: DistContext) -> None:
    from diffdef.training.stage_ae import build_ae_stage
    from diffdef.training.ldm import build_ldm_stage, denoiser_config
    from diffdef.training.stage_reg import build_reg_stage, check_registration
    from diffdef.template import load_template

    run_cfg = cfg["run"]
    # Initial weights come from the seed too (DDP then broadcasts rank 0's copy to every rank).
    torch.manual_seed(step_seed(cfg["seed"], f"{stage}/init", 0, 0))
    if stage == "ae":
        run, ae = build_ae_stage(cfg, data, ctx)
        run_stage(run, out_dir, cfg["seed"], config_hash(cfg, "ae"), run_cfg["checkpoint_every"], ctx)
        if ctx.is_main:
            save_module(out_dir, "autoencoder", ae, cfg["models"]["autoencoder"])
    elif stage == "reg":
        run, reg = build_reg_stage(cfg, data, ctx)
        run_stage(run, out_dir, cfg["seed"], config_hash(cfg, "reg"), run_cfg["checkpoint_every"], ctx)
        if ctx.is_main:
            save_module(out_dir, "registration", reg, cfg["models"]["registration"])
            # as many held-out fields as the training bank has, up to the 8 the threshold was measured with
            held_out = max(1, min(8, int(cfg["reg"]["synthetic_fields"]) or 8))
            check_registration(reg, load_template(data.grid), ctx.device, n_fields=held_out, pairs=2 * held_out)
    elif stage == "ldm":
        ae, reg = _load_ae(out_dir, cfg).to(ctx.device), _load_reg(out_dir, cfg).to(ctx.device)
        ldm = build_ldm_stage(cfg, data, ae, reg, ctx)
        run, denoiser, decoder, latent_scale = ldm.run, ldm.denoiser, ldm.decoder, ldm.latent_scale
        run_stage(run, out_dir, cfg["seed"], config_hash(cfg, "ldm"), run_cfg["checkpoint_every"], ctx)
        if ctx.is_main:
            save_module(out_dir, "denoiser", denoiser, denoiser_config(cfg, len(data.spec.names)).to_dict())
            save_module(out_dir, "dvf_decoder", decoder, decoder.config.to_dict())
            write_model_json(out_dir, grid=data.grid.name, conditions=data.spec.to_dict(), schedule=cfg["schedule"],
                             latent_scale=latent_scale, sample_steps=int(cfg["ldm"]["sample_steps"]),
                             default_steps=GENERATION_STEPS, preset=cfg.get("preset"))
    else:
        raise ValueError(f"unknown stage {stage!r}; choose one of {STAGES} or 'all'")


def train(stage: str, cfg: dict[str, Any], out_dir: Path, restart: bool = False) -> None:
    """Train ``stage`` (``ae``, ``reg``, ``ldm`` or ``all``) into ``out_dir``; resumes where a run stopped."""
    stages = list(STAGES) if stage == "all" else [stage]
    for name in stages:
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}; choose one of {STAGES} or 'all'")
    ctx = init_distributed(cfg["run"]["device"])
    if int(cfg["run"].get("num_threads") or 0) > 0:
        torch.set_num_threads(int(cfg["run"]["num_threads"]))
    out_dir = Path(out_dir)
    try:
        done = [s for s in _progress(out_dir) if not (restart and s in stages)]
        todo = [s for s in stages if s not in done]
        data = None
        if todo:  # load (and so check) the data before writing anything to out_dir
            try:
                data = load_training_data(cfg["data"], show_progress=ctx.is_main)
            except (ValueError, FileNotFoundError) as err:
                raise TrainingDataError(str(err)) from err
        if ctx.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            if restart:
                for name in stages:
                    state_path(out_dir, name).unlink(missing_ok=True)
                atomic.write_json(out_dir / "progress.json", {"completed": done})
            atomic.write_json(out_dir / "config.json", cfg)
        barrier(ctx)
        for name in set(stages) - set(todo):
            log.info("stage %s is already complete in %s (use --restart to train it again)", name, out_dir)
        if not todo:
            return
        for name in todo:
            if name == "ldm" and not {"ae", "reg"} <= set(_progress(out_dir)):
                raise RuntimeError(f"stage ldm needs a trained autoencoder and registration network in {out_dir}: "
                                   "run `diffdef-train ae` and `diffdef-train reg` (or `all`) first")
            _run_one(name, cfg, data, out_dir, ctx)
            barrier(ctx)
            if ctx.is_main:
                _mark_done(out_dir, name)
            barrier(ctx)
    finally:
        shutdown(ctx)
