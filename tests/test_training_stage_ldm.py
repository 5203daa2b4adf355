"""Stage ldm helpers: latent normalisation, the registration network's identity bias."""

import pytest
import torch

from diffdef.training.stage_ldm import identity_bias, morphology_residual, normalise_latents, registration_fields


def _latents():
    g = torch.Generator().manual_seed(0)
    shared = 3.0 * torch.randn(1, 3, 4, 5, 4, generator=g)  # the template: dominates every latent
    return shared + 0.1 * torch.randn(20, 3, 4, 5, 4, generator=g)


def test_centred_latents_have_zero_mean_and_unit_std():
    raw = _latents()
    z, mean, scale = normalise_latents(raw, centre=True, scale=None)
    assert mean.shape == (1, 3, 4, 5, 4)
    assert float(z.mean(0).abs().max()) < 1e-4  # every voxel centred (z has unit std)
    assert z.std().item() == pytest.approx(1.0, rel=1e-4)
    assert 1 / scale == pytest.approx(0.1, rel=0.1)  # the between-subject spread, not the template's
    torch.testing.assert_close(z / scale + mean, raw)  # what the DVF decoder undoes


def test_uncentred_latents_keep_the_template():
    raw = _latents()
    z, mean, scale = normalise_latents(raw, centre=False, scale=None)
    assert mean is None and z.std().item() == pytest.approx(1.0, rel=1e-4) and 1 / scale > 2.0
    z, _, scale = normalise_latents(raw, centre=False, scale=0.3)  # the paper's fixed scale
    assert scale == 0.3
    torch.testing.assert_close(z, raw * 0.3)


class _BiasedRegistration(torch.nn.Module):
    """A fake registration network with a known answer: ``fixed - moving`` on each of 3 channels, plus a constant
    offset field ``bias`` (what it returns for an identical pair)."""

    def __init__(self, shape):
        super().__init__()
        self.bias = torch.linspace(-0.5, 0.7, 3 * int(torch.tensor(shape).prod())).view(1, 3, *shape)

    def forward(self, moving, fixed):
        return (fixed - moving).expand(-1, 3, -1, -1, -1) + self.bias


def test_registration_fields_less_the_identity_bias():
    shape = (4, 6, 4)
    reg = _BiasedRegistration(shape)
    g = torch.Generator().manual_seed(1)
    template, images = torch.rand(1, 1, *shape, generator=g), torch.rand(5, 1, *shape, generator=g)
    truth = (images - template).expand(-1, 3, -1, -1, -1)
    torch.testing.assert_close(identity_bias(reg, template), reg.bias)
    plain = registration_fields(reg, template, images, torch.device("cpu"), chunk=2)
    corrected = registration_fields(reg, template, images, torch.device("cpu"), chunk=2, bias_correction=True)
    torch.testing.assert_close(plain, truth + reg.bias)
    torch.testing.assert_close(corrected, truth)


def test_morphology_residual_is_zero_for_the_atlas_itself_only_when_corrected():
    shape = (4, 6, 4)
    reg = _BiasedRegistration(shape)
    atlas = torch.rand(1, 1, *shape, generator=torch.Generator().manual_seed(2), requires_grad=True)
    moving = torch.cat([atlas.detach(), atlas.detach() + 0.25])
    corrected = morphology_residual(reg, moving, atlas, bias_correction=True)
    torch.testing.assert_close(corrected[0], torch.zeros(3, *shape))
    torch.testing.assert_close(corrected[1], torch.full((3, *shape), -0.25))
    plain = morphology_residual(reg, moving, atlas, bias_correction=False)
    torch.testing.assert_close(plain[0], reg.bias[0])
    # differentiable in the atlas: d/d atlas of sum(fixed - moving) over the 2 neighbours and 3 channels (the
    # identity pair's own fixed - moving cancels)
    corrected.sum().backward()
    torch.testing.assert_close(atlas.grad, torch.full_like(atlas, 6.0))


def _tiny_ldm_stage(overrides: dict, spy=None, reg=None):
    """The tiny preset's ldm stage (random AE), ``ldm`` keys overridden; ``reg``: the registration network (default:
    a random one); with ``spy`` in place of ``prefit_field_basis``, run up to the pre-fit. Returns the stage, its
    config, the encoded latents as the decoder sees them (N, C, d, h, w) and N."""
    from diffdef.models.autoencoder import AutoencoderConfig, build_autoencoder
    from diffdef.models.registration import RegistrationConfig, RegistrationNet
    from diffdef.training import stage_ldm
    from diffdef.training.config import preset_config
    from diffdef.training.data import load_training_data
    from diffdef.training.distributed import DistContext

    cfg = preset_config("tiny")
    cfg["ldm"].update(overrides)
    torch.manual_seed(0)
    data = load_training_data(cfg["data"], show_progress=False)
    ae = build_autoencoder(AutoencoderConfig.from_dict(cfg["models"]["autoencoder"])).eval()
    if reg is None:
        reg = RegistrationNet.from_config(RegistrationConfig.from_dict(cfg["models"]["registration"]))
    run, _, _, scale = stage_ldm.build_ldm_stage(cfg, data, ae, reg, DistContext(0, 1, torch.device("cpu")))
    if spy is not None:
        original, stage_ldm.prefit_field_basis = stage_ldm.prefit_field_basis, spy
        try:
            warmup_start = cfg["ldm"]["unet_steps"] - cfg["ldm"]["decoder_warmup_steps"]
            run.step_fn(warmup_start, torch.Generator().manual_seed(0))  # the pre-fit runs at this step
        finally:
            stage_ldm.prefit_field_basis = original
    encoded, _, _ = normalise_latents(stage_ldm.encode_latents(ae, data.images, torch.device("cpu")), True, None)
    return run, cfg, encoded / scale, len(data)


def test_prefit_sees_encoded_and_sampler_drawn_latents_with_their_subjects_targets():
    seen = []

    def spy(basis, latents, targets, *args):
        seen.append((latents.clone(), targets.clone()))
        return 0.0

    _, _, encoded, n = _tiny_ldm_stage({"basis_prefit_samples": 2}, spy)
    latents, targets = seen[0]
    assert latents.shape == (3 * n, *encoded.shape[1:])
    assert targets.shape[0] == n  # one per subject: drawn row j shares subject (j mod n)'s (no copies)
    torch.testing.assert_close(latents[:n], encoded)  # the encoded latents first, as the decoder sees them
    drawn = latents[n:]
    assert torch.isfinite(drawn).all() and float((drawn[:n] - drawn[n:]).abs().max()) > 1e-3  # two draws differ
    assert float((drawn[:n] - encoded).abs().max()) > 1e-3  # drawn by the UNet, not copies
    _tiny_ldm_stage({"basis_prefit_samples": 2}, spy)  # same seed, same draws
    torch.testing.assert_close(seen[1][0], latents)
    _tiny_ldm_stage({"basis_prefit_samples": 0}, spy)  # off: the encoded latents only
    assert seen[2][0].shape[0] == n


def test_dvf_decoder_parts_must_match_the_basis_rank():
    with pytest.raises(ValueError, match="dvf_decoder='basis' needs ldm.basis_rank > 0"):
        _tiny_ldm_stage({"dvf_decoder": "basis", "basis_rank": 0, "basis_prefit_steps": 0})
    with pytest.raises(ValueError, match="dvf_decoder='decoder' needs ldm.basis_rank = 0"):
        _tiny_ldm_stage({"dvf_decoder": "decoder"})



def test_basis_only_decoder_trains_the_basis_without_a_copied_decoder():
    run, _, _, _ = _tiny_ldm_stage({"dvf_decoder": "basis"})
    decoder = run.modules["dvf_decoder"]
    assert decoder.decoder is None and all(k.startswith("basis.") for k in decoder.state_dict())
    before = decoder.basis.fields.detach().clone()
    generator = torch.Generator().manual_seed(0)
    for step in range(run.total_steps):
        run.step_fn(step, generator)
    assert not torch.equal(before, decoder.basis.fields)  # the pre-fit, warm-up and joint steps moved it

