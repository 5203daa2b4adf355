"""Resumable training state: one safetensors file per stage, replaced atomically.

The file holds every trainable module's weights and every optimiser's tensors; its string metadata holds
the step, the stage's configuration hash and the optimisers' param groups (JSON). No pickle is involved.
Random draws need no saved RNG state: each step reseeds from (seed, stage, step, rank) (see ``loop.py``),
so a resumed run draws exactly what an uninterrupted run would have drawn.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from diffdef_runtime.atomic import atomic_path


class TrainingStateError(RuntimeError):
    """A training state file is unreadable or belongs to another configuration."""


@dataclass
class LoadedState:
    step: int
    config_hash: str


def state_path(out_dir: Path, stage: str) -> Path:
    return Path(out_dir) / "state" / f"{stage}.safetensors"


def save_state(path: Path, step: int, config_hash: str, modules: dict[str, torch.nn.Module],
               optimizers: dict[str, torch.optim.Optimizer]) -> None:
    """Write the state for ``step`` atomically (tmp file in the same folder, fsync, rename)."""
    tensors: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            tensors[f"model/{name}/{key}"] = value.detach().cpu().contiguous()
    optim_meta = {}
    for name, optimizer in optimizers.items():
        sd = optimizer.state_dict()
        scalars = {}
        for index, entry in sd["state"].items():
            for key, value in entry.items():
                if torch.is_tensor(value):
                    tensors[f"optim/{name}/{index}/{key}"] = value.detach().cpu().contiguous()
                else:
                    scalars[f"{index}/{key}"] = value
        optim_meta[name] = {"param_groups": sd["param_groups"], "scalars": scalars}
    metadata = {"step": str(step), "config_hash": config_hash, "optimizers": json.dumps(optim_meta)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_state(path: Path, config_hash: str, modules: dict[str, torch.nn.Module],
               optimizers: dict[str, torch.optim.Optimizer]) -> LoadedState:
    """Load a state written by ``save_state`` into the given modules and optimisers (strict)."""
    try:
        with safe_open(str(path), framework="pt") as handle:  # one read: tensors and metadata
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        step = int(metadata["step"])
        saved_hash = metadata["config_hash"]
        optim_meta = json.loads(metadata["optimizers"])
    except (SafetensorError, OSError, KeyError, ValueError) as err:
        raise TrainingStateError(f"training state {path} is unreadable ({err}); delete it to restart the stage") from err
    if saved_hash != config_hash:
        raise TrainingStateError(
            f"training state {path} was written with a different configuration (hash {saved_hash}, now "
            f"{config_hash}); use another --out folder, or --restart to discard it"
        )
    for name, module in modules.items():
        prefix = f"model/{name}/"
        sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        module.load_state_dict(sd, strict=True)
    for name, optimizer in optimizers.items():
        meta = optim_meta[name]
        state: dict[int, dict] = {}
        prefix = f"optim/{name}/"
        for key, value in tensors.items():
            if key.startswith(prefix):
                index, field = key[len(prefix):].split("/", 1)
                state.setdefault(int(index), {})[field] = value
        for key, value in meta["scalars"].items():
            index, field = key.split("/", 1)
            state.setdefault(int(index), {})[field] = value
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return LoadedState(step=step, config_hash=saved_hash)
