"""Saving and loading trained modules: ``name.safetensors`` (weights) + ``name.json`` (config), no pickle.

JSON: ``{"config": ..., "extra": ..., "format_version": 1, "kind": name, "weights_sha256": ...}`` (sorted keys).
``weights_sha256`` is the SHA-256 of the safetensors file, so a weights file that still parses but was corrupted
or swapped is refused too. Both files are written atomically (temporary file in the same folder, fsync,
``os.replace``); weights first, JSON last, so the JSON only ever names complete weights.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from diffdef_runtime import atomic

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, of another format version, or does not match the module."""


def _check_name(name: str) -> None:
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"invalid checkpoint name {name!r}")


def weights_path(directory: str | os.PathLike, name: str) -> Path:
    return Path(directory) / f"{name}.safetensors"


def meta_path(directory: str | os.PathLike, name: str) -> Path:
    return Path(directory) / f"{name}.json"


def save_module(
    directory: str | os.PathLike,
    name: str,
    module: nn.Module,
    config_dict: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write ``directory/name.safetensors`` and ``directory/name.json`` (atomically each).

    Args:
        module: its ``state_dict()`` is saved (CPU, contiguous copies).
        config_dict: JSON-serialisable config the module is rebuilt from (e.g. ``cfg.to_dict()``).
        extra: JSON-serialisable extra information (condition ranges, latent scale, ...).
    """
    _check_name(name)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}
    blob = st_save(tensors, metadata={"format_version": str(FORMAT_VERSION), "kind": name})
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": name,
        "config": config_dict,
        "extra": extra,
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
    }
    text = json.dumps(meta, sort_keys=True, indent=2, allow_nan=False) + "\n"  # fails before writing anything
    atomic.write_bytes(weights_path(directory, name), blob)
    atomic.write_bytes(meta_path(directory, name), text.encode("utf-8"))


def load_meta(directory: str | os.PathLike, name: str) -> dict[str, Any]:
    """The checked JSON of a checkpoint (``config``, ``extra``, ...), without reading the weights."""
    _check_name(name)
    path = meta_path(directory, name)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read: {exc}") from exc
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {version!r}, this code reads {FORMAT_VERSION}")
    if meta.get("kind") != name:
        raise CheckpointError(f"{path}: kind {meta.get('kind')!r} != {name!r}")
    if not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{path}: 'config' missing or not an object")
    return meta


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def config_differences(saved: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """Human-readable differences between two config dicts (nested keys dotted; tuples == lists)."""
    a = _flatten(json.loads(json.dumps(saved)))
    b = _flatten(json.loads(json.dumps(expected)))
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key not in a:
            diffs.append(f"{key}: missing in checkpoint (expected {b[key]!r})")
        elif key not in b:
            diffs.append(f"{key}: {a[key]!r} in checkpoint, not expected")
        elif a[key] != b[key]:
            diffs.append(f"{key}: {a[key]!r} in checkpoint, expected {b[key]!r}")
    return diffs


def load_module(
    directory: str | os.PathLike,
    name: str,
    build_fn: Callable[[dict[str, Any]], nn.Module],
    expected_config: dict[str, Any] | None = None,
) -> nn.Module:
    """Rebuild a module from ``name.json`` with ``build_fn(config_dict)`` and load ``name.safetensors`` strictly.

    Raises:
        CheckpointError: missing or unreadable files, format version mismatch, config differing from
            ``expected_config``, weights failing their checksum, or missing/unexpected/misshapen weights.
    """
    meta = load_meta(directory, name)
    jpath = meta_path(directory, name)
    config = meta["config"]
    if expected_config is not None:
        diffs = config_differences(config, expected_config)
        if diffs:
            raise CheckpointError(f"{jpath}: config differs from the expected one: " + "; ".join(diffs))

    wpath = weights_path(directory, name)
    try:
        blob = wpath.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{wpath}: checkpoint file not found") from None
    except OSError as exc:
        raise CheckpointError(f"{wpath}: cannot read: {exc}") from exc
    digest = meta.get("weights_sha256")
    if digest is not None and hashlib.sha256(blob).hexdigest() != digest:
        raise CheckpointError(f"{wpath}: checksum mismatch with {jpath.name} (corrupted, truncated or replaced)")
    try:
        state = st_load(blob)
    except Exception as exc:  # safetensors raises its own error types for malformed files
        raise CheckpointError(f"{wpath}: unreadable safetensors file: {exc}") from exc

    try:
        module = build_fn(config)
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{jpath}: cannot build the module from its config: {exc}") from exc

    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(own[k].shape) != tuple(state[k].shape)
    )
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys: {missing[:8]}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys: {unexpected[:8]}")
        if shapes:
            parts.append(f"shape mismatch (checkpoint vs module): {shapes[:8]}")
        raise CheckpointError(f"{wpath}: weights do not fit the module: " + "; ".join(parts))
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{wpath}: {exc}") from exc
    return module


MODEL_FORMAT_VERSION = 1  # of model.json: what generation needs besides the weights


def write_model_json(checkpoint_dir: str | Path, *, grid: str, conditions: dict, schedule: dict, latent_scale: float,
                     sample_steps: int, default_steps: int | None, preset: str | None) -> None:
    """Write ``model.json`` (atomically): the training grid's name, the condition spec
    (``ConditionSpec.to_dict``), the noise schedule, the latent scale, ``sample_steps`` (the DDIM steps training
    drew latents with), ``default_steps`` (generation's default sampler steps; None: not recorded) and the
    preset."""
    atomic.write_json(Path(checkpoint_dir) / "model.json", {
        "format_version": MODEL_FORMAT_VERSION,
        "grid": grid,
        "conditions": conditions,
        "schedule": schedule,
        "latent_scale": float(latent_scale),
        "sample_steps": int(sample_steps),
        **({"default_steps": int(default_steps)} if default_steps is not None else {}),
        "preset": preset,
    })



def read_model_json(checkpoint_dir: str | Path) -> dict:
    """``model.json`` of a trained checkpoint folder, validated; errors name the folder."""
    path = Path(checkpoint_dir) / "model.json"
    if not Path(checkpoint_dir).is_dir():
        raise CheckpointError(f"checkpoint folder not found: {checkpoint_dir}")
    if not path.is_file():
        raise CheckpointError(f"{checkpoint_dir} is not a trained DiffDef checkpoint: no model.json "
                              "(train it with `diffdef-train all`)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from err
    if meta.get("format_version") != MODEL_FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {meta.get('format_version')!r}, expected {MODEL_FORMAT_VERSION}")
    return meta
