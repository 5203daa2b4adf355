"""Registration net: shapes, the DVF convention (warp_image(moving, dvf) ~ fixed), input downsampling."""

import pytest
import torch

from diffdef.geometry import warp_image
from diffdef.models.registration import (RegistrationConfig, RegistrationNet, downsample_dvf, registration_preset,
                                         upsample_dvf)

SHAPE = (16, 24, 16)


def _set_constant_output(net: RegistrationNet, value: tuple[float, float, float]) -> None:
    conv = net.backbone.net[1].final_conv_out.conv
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.copy_(torch.tensor(value))


def test_untrained_output_shape_and_near_identity():
    torch.manual_seed(0)
    net = RegistrationNet(registration_preset("tiny"))
    moving, fixed = torch.rand(2, 1, *SHAPE), torch.rand(2, 1, *SHAPE)
    dvf = net(moving, fixed)
    assert dvf.shape == (2, 3, *SHAPE)
    assert float(dvf.abs().max()) < 1e-2  # VoxelMorph's N(0, 1e-5) flow-layer init
    dvf.square().mean().backward()
    assert net.backbone.net[1].final_conv_out.conv.weight.grad is not None


@pytest.mark.parametrize("steps", [0, 7])
def test_output_is_a_displacement_in_voxels_for_warp_image(steps):
    # A planted shift: fixed(x) = moving(x + (2, 0, 0)). A net that outputs the constant (2, 0, 0) registers
    # moving to fixed under the project's convention warped(x) = moving(x + u(x)). A constant velocity
    # integrates to itself, so the same holds in diffeomorphic mode.
    net = RegistrationNet(registration_preset("tiny").replace(integration_steps=steps))
    _set_constant_output(net, (2.0, 0.0, 0.0))
    moving = torch.rand(1, 1, *SHAPE, generator=torch.Generator().manual_seed(1))
    fixed = torch.roll(moving, shifts=-2, dims=2)  # fixed[i] = moving[i + 2]
    dvf = net(moving, fixed)
    torch.testing.assert_close(dvf, torch.tensor([2.0, 0.0, 0.0]).view(1, 3, 1, 1, 1).expand_as(dvf))
    warped = warp_image(moving, dvf)
    torch.testing.assert_close(warped[:, :, :-2], fixed[:, :, :-2])  # border padding aside


def test_input_downsample_doubles_displacements_and_size():
    cfg = registration_preset("tiny").replace(input_downsample=2)
    assert cfg.shape_multiple == 8
    net = RegistrationNet(cfg)
    _set_constant_output(net, (1.0, -0.5, 0.25))
    x = torch.rand(1, 1, *SHAPE)
    assert net.raw_field(x, x).shape == (1, 3, 8, 12, 8)
    dvf = net(x, x)
    assert dvf.shape == (1, 3, *SHAPE)
    torch.testing.assert_close(dvf, torch.tensor([2.0, -1.0, 0.5]).view(1, 3, 1, 1, 1).expand_as(dvf))
    with pytest.raises(ValueError, match="divisible"):
        net(torch.rand(1, 1, 12, 24, 16), torch.rand(1, 1, 12, 24, 16))


def test_upsample_dvf_maps_block_centres():
    # coarse u_c(i) = a*i + b (coarse voxels) -> fine u_f(x) = a*(x - (f-1)/2) + f*b away from the border
    f, a, b = 2, 0.3, 0.7
    i = torch.arange(8, dtype=torch.float64)
    coarse = (a * i + b).view(1, 1, 8, 1, 1).expand(1, 3, 8, 4, 4).contiguous()
    fine = upsample_dvf(coarse, f)
    x = torch.arange(16, dtype=torch.float64)
    expected = a * (x - (f - 1) / 2) + f * b
    torch.testing.assert_close(fine[0, 0, 1:-1, 3, 3], expected[1:-1])


def test_downsample_dvf_is_the_inverse_convention():
    # fine u_f(x) = a*x + c (fine voxels) -> coarse block means a*(f*i + (f-1)/2) + c, in coarse voxels (/ f)
    f, a, c = 2, 0.3, 0.7
    x = torch.arange(16, dtype=torch.float64)
    fine = (a * x + c).view(1, 1, 16, 1, 1).expand(1, 3, 16, 4, 4).contiguous()
    coarse = downsample_dvf(fine, f)
    assert coarse.shape == (1, 3, 8, 2, 2)
    i = torch.arange(8, dtype=torch.float64)
    torch.testing.assert_close(coarse[0, 0, :, 1, 1], (a * (f * i + (f - 1) / 2) + c) / f)
    torch.testing.assert_close(upsample_dvf(coarse, f)[0, 0, 1:-1, 3, 3], fine[0, 0, 1:-1, 3, 3])  # linear: exact
    assert downsample_dvf(fine, 1) is fine


def test_config_round_trip():
    cfg = registration_preset("default")
    assert RegistrationConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        RegistrationConfig.from_dict({"channels": [4, 8], "nope": 0})
    with pytest.raises(ValueError):
        RegistrationConfig(channels=(4, 8, 8))


def test_presets_fit_their_grids():
    """Each preset's network accepts its training grid (2 mm: 80x112x80 at 8 mm inputs; paper: 160x224x160)."""
    from diffdef_runtime.grid import get_grid

    for preset, grid in (("tiny", "4mm"), ("default", "2mm"), ("paper", "paper")):
        multiple = registration_preset(preset).shape_multiple
        assert all(size % multiple == 0 for size in get_grid(grid).shape), (preset, multiple)
    assert registration_preset("default").input_downsample == 4  # the 8 mm network (docs/RESULTS.md)
