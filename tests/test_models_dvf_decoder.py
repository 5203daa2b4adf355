"""DVF decoder: identity at start, copied decoder weights, diffeomorphic head."""

import pytest
import torch

from diffdef.geometry import integrate_svf
from diffdef.models.autoencoder import autoencoder_preset, build_autoencoder
from diffdef.models.dvf_decoder import DVFDecoder, DVFDecoderConfig


def _ae():
    torch.manual_seed(0)
    return build_autoencoder(autoencoder_preset("tiny"))


def _z():
    return torch.randn(2, 3, 4, 3, 4, generator=torch.Generator().manual_seed(1))


def test_fresh_head_gives_exactly_zero_dvf():
    cfg = DVFDecoderConfig(autoencoder=autoencoder_preset("tiny"))
    for dec in (DVFDecoder.from_config(cfg), DVFDecoder.from_autoencoder(_ae(), cfg),
                DVFDecoder.from_config(cfg.replace(diffeomorphic=True))):
        dvf = dec(_z())
        assert dvf.shape == (2, 3, 32, 24, 32)
        assert torch.equal(dvf, torch.zeros_like(dvf))


def test_copies_the_autoencoder_decoder():
    ae = _ae()
    dec = DVFDecoder.from_autoencoder(ae, DVFDecoderConfig(autoencoder=autoencoder_preset("tiny")))
    own = dec.state_dict()
    head = f"decoder.blocks.{len(dec.decoder.blocks) - 1}."
    ae_state = ae.state_dict()
    n = 0
    for k, v in own.items():
        if k.startswith(head):
            continue
        assert torch.equal(v, ae_state[k]), k  # same names as in AutoencoderKL
        n += 1
    assert n > 10 and dec.head.conv.weight.shape[0] == 3
    # a deep copy: training the DVF decoder leaves the autoencoder alone
    with torch.no_grad():
        next(dec.decoder.parameters()).add_(1.0)
    assert not torch.equal(next(dec.decoder.parameters()), next(ae.decoder.parameters()))
    # same path as AutoencoderKL.decode: give channel 0 of the head the image conv -> channel 0 == decode
    with torch.no_grad():
        next(dec.decoder.parameters()).sub_(1.0)
        dec.head.conv.weight[0:1].copy_(ae.decoder.blocks[-1].conv.weight)
        dec.head.conv.bias[0:1].copy_(ae.decoder.blocks[-1].conv.bias)
        z = _z()
        torch.testing.assert_close(dec(z)[:, 0:1], ae.decode(z), rtol=1e-5, atol=1e-4)  # 1-thread rounding: 1e-5


def test_mismatched_autoencoder_refused():
    with pytest.raises(ValueError, match="does not match"):
        DVFDecoder.from_autoencoder(_ae(), DVFDecoderConfig(autoencoder=autoencoder_preset("default")))


def test_diffeomorphic_output_is_integrated_head():
    cfg = DVFDecoderConfig(autoencoder=autoencoder_preset("tiny"), diffeomorphic=True, integration_steps=5)
    dec = DVFDecoder.from_autoencoder(_ae(), cfg)
    with torch.no_grad():
        dec.head.conv.weight.normal_(0.0, 0.05)
    z = _z()
    raw = dec.raw_field(z)
    assert float(raw.abs().max()) > 0
    torch.testing.assert_close(dec(z), integrate_svf(raw, 5))
    plain = DVFDecoder.from_autoencoder(_ae(), cfg.replace(diffeomorphic=False))
    plain.load_state_dict(dec.state_dict())
    torch.testing.assert_close(plain(z), raw)


def test_config_round_trip():
    cfg = DVFDecoderConfig(autoencoder=autoencoder_preset("tiny"), diffeomorphic=True)
    assert DVFDecoderConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        DVFDecoderConfig.from_dict({**cfg.to_dict(), "head": "x"})
    with pytest.raises(ValueError, match="unknown"):
        DVFDecoderConfig.from_dict({**cfg.to_dict(), "autoencoder": {"channelz": [1]}})


def test_centred_decoder_adds_the_population_mean_latent(tmp_path):
    from diffdef.models.checkpoint import load_module, save_module

    ae = _ae()
    cfg = DVFDecoderConfig(autoencoder=autoencoder_preset("tiny"))
    plain = DVFDecoder.from_autoencoder(ae, cfg)
    centred = DVFDecoder.from_autoencoder(ae, cfg.replace(latent_shape=(4, 3, 4)))
    with torch.no_grad():
        plain.head.conv.weight.normal_(0.0, 0.05)
        centred.head.conv.weight.copy_(plain.head.conv.weight)
    mean = torch.randn(1, 3, 4, 3, 4, generator=torch.Generator().manual_seed(2))
    centred.set_latent_mean(mean)
    z = _z()
    torch.testing.assert_close(centred(z), plain(z + mean))
    assert not torch.allclose(centred(z), plain(z))
    with pytest.raises(ValueError, match="shape"):
        centred.set_latent_mean(torch.zeros(1, 3, 4, 4, 4))
    with pytest.raises(ValueError, match="without latent centring"):
        plain.set_latent_mean(mean)
    # the mean travels with the checkpoint (a buffer), and its config says so
    save_module(tmp_path, "dvf_decoder", centred, centred.config.to_dict())
    loaded = load_module(tmp_path, "dvf_decoder", lambda c: DVFDecoder.from_config(DVFDecoderConfig.from_dict(c)))
    assert loaded.config.latent_shape == (4, 3, 4)
    torch.testing.assert_close(loaded.latent_mean, mean)
    torch.testing.assert_close(loaded(z), centred(z))


def test_integration_on_a_coarser_grid():
    from diffdef.models.dvf_decoder import integrate_on_coarse_grid
    from diffdef.models.registration import upsample_dvf

    g = torch.Generator().manual_seed(4)
    v = torch.nn.functional.interpolate(torch.randn(1, 3, 4, 3, 4, generator=g), size=(32, 24, 32),
                                        mode="trilinear", align_corners=False)  # smooth velocity, max ~2.5 voxels
    coarse = integrate_on_coarse_grid(v, 5, 2)
    manual = upsample_dvf(integrate_svf(torch.nn.functional.avg_pool3d(v, 2) / 2, 5), 2)
    assert torch.equal(coarse, manual)
    full = integrate_svf(v, 5)
    error = float((coarse - full).abs().mean() / full.abs().mean())
    assert 0 < error < 0.1  # close to the full-grid integration (measured 0.061), not the same
    shift = torch.tensor([1.5, -0.5, 2.0]).view(1, 3, 1, 1, 1).expand(1, 3, 32, 24, 32)
    torch.testing.assert_close(integrate_on_coarse_grid(shift, 5, 2), shift)  # a translation stays exact
    with pytest.raises(ValueError, match="integration_down 3"):
        integrate_on_coarse_grid(v, 5, 3)
    cfg = DVFDecoderConfig(autoencoder=autoencoder_preset("tiny"), diffeomorphic=True, integration_down=2)
    dec = DVFDecoder.from_config(cfg)
    with torch.no_grad():
        torch.nn.init.normal_(dec.head.conv.weight, std=0.05, generator=g)
        z = _z()
        torch.testing.assert_close(dec(z), integrate_on_coarse_grid(dec.raw_field(z), 7, 2))
    with pytest.raises(ValueError, match="integration_down"):
        DVFDecoderConfig(integration_down=0)


def _decoder_with_basis(parts: str = "decoder+basis", seed: int = 2) -> DVFDecoder:
    from diffdef.models.field_basis import FieldBasisConfig

    basis = FieldBasisConfig(rank=2, latent_channels=3, latent_shape=(4, 3, 4), basis_shape=(16, 12, 16))
    dec = DVFDecoder.from_autoencoder(_ae(), DVFDecoderConfig(autoencoder=autoencoder_preset("tiny"), parts=parts,
                                                             diffeomorphic=True, basis=basis))
    torch.manual_seed(seed)
    with torch.no_grad():
        dec.basis.fields.normal_(0.0, 0.5)
    return dec


def test_basis_alone_has_no_decoder_and_equals_the_sum_with_a_zero_head():
    both, alone = _decoder_with_basis("decoder+basis"), _decoder_with_basis("basis")
    alone.basis.load_state_dict(both.basis.state_dict())
    assert alone.decoder is None and alone.post_quant_conv is None
    assert not any(isinstance(m, torch.nn.Conv3d) for m in alone.modules())  # no full-resolution convolution
    assert all(k.startswith("basis.") for k in alone.state_dict())
    assert alone.parameter_groups()["decoder"] == []
    z = _z()
    full = both(z)
    assert full.shape == (2, 3, 32, 24, 32) and full.abs().max() > 0.1
    assert torch.equal(alone(z), full)  # the zero head adds exact zeros
    with torch.no_grad():  # a non-zero head: the sum differs
        both.head.conv.bias.fill_(0.25)
    assert not torch.allclose(both(z), full, atol=1e-3)
    with pytest.raises(AttributeError, match="head"):
        alone.head


def test_parts_must_match_the_basis_and_old_files_read_as_before():
    from diffdef.models.field_basis import FieldBasisConfig

    basis = FieldBasisConfig(rank=2, latent_channels=3, latent_shape=(4, 3, 4), basis_shape=(16, 12, 16))
    tiny = autoencoder_preset("tiny")
    with pytest.raises(ValueError, match="parts='basis' needs basis set"):
        DVFDecoderConfig(autoencoder=tiny, parts="basis")
    with pytest.raises(ValueError, match="parts='decoder' needs basis None"):
        DVFDecoderConfig(autoencoder=tiny, basis=basis)
    with pytest.raises(ValueError, match="parts must be one of"):
        DVFDecoderConfig(autoencoder=tiny, parts="head")
    with pytest.raises(ValueError, match="needs the decoder part"):
        DVFDecoderConfig(autoencoder=tiny, parts="basis", basis=basis, latent_shape=(4, 3, 4))
    old = DVFDecoderConfig(autoencoder=tiny, parts="decoder+basis", basis=basis).to_dict()
    del old["parts"]  # a dvf_decoder.json written before the key existed
    assert DVFDecoderConfig.from_dict(old).parts == "decoder+basis"
    old["basis"] = None
    assert DVFDecoderConfig.from_dict(old).parts == "decoder"
    with pytest.raises(ValueError, match="latent channels"):
        DVFDecoder.from_autoencoder(build_autoencoder(autoencoder_preset("tiny").replace(latent_channels=2)),
                                    DVFDecoderConfig(autoencoder=tiny, parts="basis", basis=basis))
