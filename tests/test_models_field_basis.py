"""Field basis of the DVF decoder: zero at start, the arithmetic of B_0 + sum a_k(z) B_k, gradients, config,
and its place in the DVF decoder (identity at start, checkpoint round trip, parameter groups)."""

import pytest
import torch

from diffdef.models.autoencoder import autoencoder_preset, build_autoencoder
from diffdef.models.checkpoint import load_module, save_module
from diffdef.models.dvf_decoder import DVFDecoder, DVFDecoderConfig
from diffdef.models.field_basis import FieldBasis, FieldBasisConfig

CFG = FieldBasisConfig(rank=2, latent_channels=3, latent_shape=(4, 3, 4), basis_shape=(16, 12, 16))
SIZE = (32, 24, 32)


def _z(n=2, seed=1):
    return torch.randn(n, 3, 4, 3, 4, generator=torch.Generator().manual_seed(seed))


def test_fresh_basis_is_zero_on_the_output_grid():
    out = FieldBasis(CFG)(_z(), SIZE)
    assert out.shape == (2, 3, *SIZE)
    assert torch.equal(out, torch.zeros_like(out))


def test_constant_fields_combine_with_the_coefficients():
    basis = FieldBasis(CFG)
    with torch.no_grad():
        basis.coefficients.weight.zero_()
        basis.coefficients.bias.copy_(torch.tensor([2.0, -0.5]))
        for k, value in enumerate((0.25, 1.0, 4.0)):  # B_0, B_1, B_2 constant per channel
            basis.fields[k] = value * torch.tensor([1.0, -2.0, 3.0]).view(3, 1, 1, 1)
    out = basis(_z(), SIZE)
    expected = (0.25 + 2.0 * 1.0 - 0.5 * 4.0) * torch.tensor([1.0, -2.0, 3.0])  # 0.25 per unit
    torch.testing.assert_close(out, expected.view(1, 3, 1, 1, 1).expand_as(out), rtol=0, atol=1e-6)


def test_coefficients_read_the_latent():
    basis = FieldBasis(CFG)
    with torch.no_grad():
        basis.coefficients.weight.zero_()
        basis.coefficients.bias.zero_()
        basis.coefficients.weight[0, 5] = 1.0  # a_1 = element 5 of the flattened latent
        basis.fields[1].fill_(1.0)
    z = _z(1)
    z2 = z.clone()
    z2.view(-1)[5] += 3.0
    diff = basis(z2, SIZE) - basis(z, SIZE)
    torch.testing.assert_close(diff, torch.full_like(diff, 3.0), rtol=0, atol=1e-5)


def test_zero_start_still_learns():
    basis = FieldBasis(CFG)
    basis(_z(), SIZE).pow(2).sum().backward()  # zero output: zero gradient; use a target instead
    basis.zero_grad()
    (basis(_z(), SIZE) - 1.0).pow(2).mean().backward()
    assert basis.fields.grad[0].abs().sum() > 0  # B_0 (always on) and B_k (a_k != 0) learn from the start
    assert basis.fields.grad[1:].abs().sum() > 0
    assert basis.coefficients.weight.grad.abs().sum() == 0  # fields are zero: coefficients wait one step


@pytest.mark.parametrize("bad", [dict(rank=0), dict(basis_shape=(4, 4)), dict(latent_shape=(4, 0, 4)),
                                 dict(latent_channels=0)])
def test_bad_config_refused(bad):
    with pytest.raises(ValueError):
        FieldBasisConfig(**{**CFG.to_dict(), **bad})


def test_decoder_with_basis_starts_at_identity_and_round_trips(tmp_path):
    torch.manual_seed(0)
    ae = build_autoencoder(autoencoder_preset("tiny"))
    cfg = DVFDecoderConfig(autoencoder=autoencoder_preset("tiny"), parts="decoder+basis", basis=CFG)
    assert DVFDecoderConfig.from_dict(cfg.to_dict()) == cfg
    dec = DVFDecoder.from_autoencoder(ae, cfg)
    assert torch.equal(dec(_z()), torch.zeros(2, 3, *SIZE))
    with torch.no_grad():
        dec.basis.fields.normal_(generator=torch.Generator().manual_seed(2))
    out = dec(_z())
    assert out.abs().max() > 0.5  # the basis reaches the output
    save_module(tmp_path, "dvf_decoder", dec, cfg.to_dict())
    loaded = load_module(tmp_path, "dvf_decoder", lambda c: DVFDecoder.from_config(DVFDecoderConfig.from_dict(c)),
                         expected_config=cfg.to_dict())
    assert torch.equal(loaded(_z()), out)
    without = DVFDecoderConfig(autoencoder=autoencoder_preset("tiny"))
    with pytest.raises(Exception, match="differs|basis"):
        load_module(tmp_path, "dvf_decoder", lambda c: DVFDecoder.from_config(DVFDecoderConfig.from_dict(c)),
                    expected_config=without.to_dict())


def test_parameter_groups_partition_the_decoder():
    dec = DVFDecoder.from_config(DVFDecoderConfig(autoencoder=autoencoder_preset("tiny"), parts="decoder+basis",
                                                  basis=CFG))
    groups = dec.parameter_groups()
    ids = [id(p) for params in groups.values() for p in params]
    assert len(ids) == len(set(ids)) == len(list(dec.parameters()))
    assert groups["basis_fields"] == [dec.basis.fields]
    assert len(groups["basis_coefficients"]) == 2
    plain = DVFDecoder.from_config(DVFDecoderConfig(autoencoder=autoencoder_preset("tiny"))).parameter_groups()
    assert plain["basis_fields"] == [] and plain["basis_coefficients"] == []
