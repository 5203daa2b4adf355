"""Autoencoder: 8x-down latent with 3 channels, configs and presets."""

import pytest
import torch

from diffdef.models.autoencoder import (
    AutoencoderConfig,
    autoencoder_preset,
    build_autoencoder,
    build_discriminator,
)


def test_latent_is_8x_down_with_3_channels():
    torch.manual_seed(0)
    cfg = autoencoder_preset("tiny")
    ae = build_autoencoder(cfg)
    x = torch.randn(2, 1, 32, 24, 16)
    rec, mu, sigma = ae(x)
    assert mu.shape == sigma.shape == (2, 3, 4, 3, 2)
    assert cfg.latent_shape((32, 24, 16)) == (3, 4, 3, 2)
    assert rec.shape == x.shape
    assert ae.decode(mu).shape == x.shape
    assert bool((sigma > 0).all())


def test_discriminator_gives_patch_logits():
    d = build_discriminator(autoencoder_preset("tiny"))
    out = d(torch.randn(1, 1, 32, 32, 32))
    assert isinstance(out, list) and out[-1].shape[:2] == (1, 1) and out[-1].ndim == 5


def test_no_attention_by_default():
    for name in ("tiny", "default", "paper"):
        cfg = autoencoder_preset(name)
        assert not cfg.latent_attention and not any(cfg.attention_levels) and cfg.latent_channels == 3
    ae = build_autoencoder(autoencoder_preset("tiny"))
    assert not any("attn" in n or "attention" in n.lower() for n, _ in ae.named_modules() if n)


def test_config_round_trip_and_validation():
    cfg = autoencoder_preset("default")
    d = cfg.to_dict()
    assert d["channels"] == list(cfg.channels)
    assert AutoencoderConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match="unknown"):
        AutoencoderConfig.from_dict({**d, "bogus": 1})
    with pytest.raises(ValueError):
        AutoencoderConfig(channels=(8, 16, 32))  # 3 levels = 4x, not 8x
    with pytest.raises(ValueError):
        AutoencoderConfig(channels=(8, 16, 16, 30), norm_num_groups=4)
    with pytest.raises(ValueError):
        autoencoder_preset("huge")
    with pytest.raises(ValueError):
        cfg.latent_shape((30, 32, 32))


def test_channels_last_gives_same_outputs(tmp_path):
    from diffdef.models.checkpoint import load_module, save_module
    from diffdef.models.autoencoder import to_channels_last

    torch.manual_seed(0)
    cfg = autoencoder_preset("tiny")
    ae = build_autoencoder(cfg)
    x = torch.randn(1, 1, 16, 16, 16)
    ref = ae.decode(ae.encode(x)[0])
    ae_cl = to_channels_last(ae)
    torch.testing.assert_close(ae_cl.decode(ae_cl.encode(x)[0]), ref, atol=1e-5, rtol=1e-4)
    save_module(tmp_path, "autoencoder", ae_cl, cfg.to_dict())
    loaded = load_module(tmp_path, "autoencoder", lambda d: build_autoencoder(AutoencoderConfig.from_dict(d)))
    torch.testing.assert_close(loaded.decode(loaded.encode(x)[0]), ref, atol=1e-5, rtol=1e-4)
