"""Conditional denoiser: shapes, both conditioning paths, the null condition and its mask."""

import pytest
import torch

from diffdef.models.denoiser import ConditionalDenoiser, DenoiserConfig, denoiser_preset, drop_conditions

K = 2


def _model(seed: int = 0) -> ConditionalDenoiser:
    torch.manual_seed(seed)
    model = ConditionalDenoiser(denoiser_preset("tiny", num_conditions=K))
    # MONAI zero-initialises the output conv (untrained output = 0): randomise so differences are visible.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _inputs(shape=(5, 7, 4), n=2):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, *shape, generator=gen)
    t = torch.tensor([10, 700][:n])
    c = torch.rand(n, K, generator=gen)
    return x, t, c


@pytest.mark.parametrize("shape", [(4, 6, 4), (5, 7, 5)])
def test_shape_any_latent_size(shape):
    model = _model()
    x, t, c = _inputs(shape)
    out = model(x, t, c, torch.ones(2, 1))
    assert out.shape == x.shape
    torch.testing.assert_close(model(x, t.float(), c, torch.ones(2, 1)), out)  # int or float timesteps


def test_output_depends_on_condition_when_used():
    model = _model()
    x, t, c = _inputs()
    ones = torch.ones(2, 1)
    with torch.no_grad():
        a = model(x, t, c, ones)
        b = model(x, t, c.flip(0), ones)
        assert float((a - b).abs().max()) > 1e-4
        # each path alone carries the condition: (1) cross-attention only (condition channels of conv_in zeroed)
        model.unet.conv_in.conv.weight[:, 3:].zero_()
        a1, b1 = model(x, t, c, ones), model(x, t, c.flip(0), ones)
        assert float((a1 - b1).abs().max()) > 1e-4
        # (2) neither path: context made constant too -> the condition no longer matters
        model.condition_mlp[-1].weight.zero_()
        torch.testing.assert_close(model(x, t, c, ones), model(x, t, c.flip(0), ones))
    # (3) channels only
    model = _model()
    with torch.no_grad():
        model.condition_mlp[-1].weight.zero_()
        a3, b3 = model(x, t, c, ones), model(x, t, c.flip(0), ones)
        assert float((a3 - b3).abs().max()) > 1e-4


def test_dropped_condition_is_ignored_and_null_gets_gradient():
    model = _model()
    x, t, c = _inputs()
    zeros = torch.zeros(2, 1)
    a = model(x, t, c, zeros)
    b = model(x, t, torch.rand(2, K), zeros)
    assert torch.equal(a, b)
    # a dropped row equals an explicit pass with the null condition
    explicit = model(x, t, model.null_condition.detach().expand(2, K), torch.ones(2, 1))
    torch.testing.assert_close(a, explicit)
    # mixed batch: row 0 conditioned, row 1 dropped
    mixed = model(x, t, c, torch.tensor([[1.0], [0.0]]))
    torch.testing.assert_close(mixed[0], model(x, t, c, torch.ones(2, 1))[0])
    torch.testing.assert_close(mixed[1], a[1])
    model.zero_grad()
    mixed.square().mean().backward()
    assert model.null_condition.grad is not None and float(model.null_condition.grad.abs().sum()) > 0


def test_drop_conditions():
    gen = torch.Generator().manual_seed(0)
    mask = drop_conditions(1000, 0.2, gen)
    assert mask.shape == (1000, 1) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert 0.12 < 1 - float(mask.mean()) < 0.28
    assert torch.equal(mask, drop_conditions(1000, 0.2, torch.Generator().manual_seed(0)))
    assert float(drop_conditions(10, 0.0).min()) == 1.0 and float(drop_conditions(10, 1.0).max()) == 0.0
    with pytest.raises(ValueError):
        drop_conditions(3, 1.5)


def test_config_and_presets():
    cfg = denoiser_preset("paper", num_conditions=3)
    assert cfg.channels == (256, 512, 768) and cfg.attention_levels == (False, True, True)
    assert cfg.num_conditions == 3
    assert DenoiserConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        DenoiserConfig.from_dict({**cfg.to_dict(), "extra": 1})
    with pytest.raises(ValueError):
        DenoiserConfig(channels=(64, 128), attention_levels=(False, True, True))
    model = ConditionalDenoiser(denoiser_preset("tiny", num_conditions=K))
    assert model.unet.conv_in.conv.in_channels == 3 + K  # latent + condition channels
