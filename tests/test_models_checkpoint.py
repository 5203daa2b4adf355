"""Checkpoints: safetensors + JSON round trip, and every way a checkpoint can be refused."""

import json

import pytest
import torch

from diffdef.models.checkpoint import CheckpointError, load_meta, load_module, save_module
from diffdef.models.denoiser import ConditionalDenoiser, DenoiserConfig, denoiser_preset

NAME = "denoiser"


def _build(d):
    return ConditionalDenoiser(DenoiserConfig.from_dict(d))


@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(0)
    cfg = denoiser_preset("tiny", num_conditions=2)
    model = ConditionalDenoiser(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    save_module(tmp_path, NAME, model, cfg.to_dict(), extra={"latent_scale": 0.3})
    return tmp_path, cfg, model


def _run(model):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 4, 6, 4, generator=gen)
    with torch.no_grad():
        return model(x, torch.tensor([5, 900]), torch.rand(2, 2, generator=gen), torch.tensor([[1.0], [0.0]]))


def test_round_trip_identical(saved):
    path, cfg, model = saved
    assert sorted(p.name for p in path.iterdir()) == [f"{NAME}.json", f"{NAME}.safetensors"]  # no temp files
    loaded = load_module(path, NAME, _build, expected_config=cfg.to_dict())
    assert torch.equal(_run(loaded), _run(model))
    meta = load_meta(path, NAME)
    assert meta["format_version"] == 1 and meta["kind"] == NAME and meta["extra"] == {"latent_scale": 0.3}
    text = (path / f"{NAME}.json").read_text()
    assert list(json.loads(text)) == sorted(json.loads(text))
    assert b"pickle" not in (path / f"{NAME}.safetensors").read_bytes()[:200]


def test_mismatched_config_refused(saved):
    path, cfg, _ = saved
    other = cfg.replace(condition_embed_dim=32).to_dict()
    with pytest.raises(CheckpointError, match="condition_embed_dim"):
        load_module(path, NAME, _build, expected_config=other)


@pytest.mark.parametrize("damage", ["truncate", "flip_header", "flip_data", "truncate_no_checksum"])
def test_damaged_weights_refused(saved, damage):
    path, _, _ = saved
    wfile = path / f"{NAME}.safetensors"
    blob = bytearray(wfile.read_bytes())
    if damage.startswith("truncate"):
        blob = blob[: len(blob) // 2]
    elif damage == "flip_header":
        blob[10] ^= 0xFF
    else:
        blob[-5] ^= 0x01
    wfile.write_bytes(bytes(blob))
    if damage == "truncate_no_checksum":  # the safetensors parser itself must refuse it too
        jfile = path / f"{NAME}.json"
        meta = json.loads(jfile.read_text())
        del meta["weights_sha256"]
        jfile.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=f"{NAME}.safetensors"):
        load_module(path, NAME, _build)


def test_missing_files_refused(saved, tmp_path_factory):
    path, _, _ = saved
    with pytest.raises(CheckpointError, match="not found"):
        load_module(tmp_path_factory.mktemp("empty"), NAME, _build)
    (path / f"{NAME}.safetensors").unlink()
    with pytest.raises(CheckpointError, match=f"{NAME}.safetensors"):
        load_module(path, NAME, _build)


def test_version_and_weight_mismatch_refused(saved):
    path, cfg, _ = saved
    jfile = path / f"{NAME}.json"
    meta = json.loads(jfile.read_text())
    jfile.write_text(json.dumps({**meta, "format_version": 2}))
    with pytest.raises(CheckpointError, match="format_version"):
        load_module(path, NAME, _build)
    # weights of another architecture under a config that builds a different one
    jfile.write_text(json.dumps({**meta, "config": cfg.replace(condition_embed_dim=32).to_dict()}))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_module(path, NAME, _build)
    jfile.write_text(json.dumps({**meta, "config": cfg.replace(num_res_blocks=2).to_dict()}))
    with pytest.raises(CheckpointError, match="missing"):
        load_module(path, NAME, _build)
