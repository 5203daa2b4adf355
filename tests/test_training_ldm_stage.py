"""The ldm stage wired together (diffdef.training.ldm.stage) on the tiny preset."""

import pytest
import torch

from diffdef.training.ldm.latents import normalise_latents


def _tiny_ldm_stage(overrides: dict, spy=None, reg=None):
    """The tiny preset's ldm stage (random AE), ``ldm`` keys overridden; ``reg``: the registration network (default:
    a random one); with ``spy`` in place of ``prefit_field_basis``, run up to the pre-fit. Returns the stage, its
    config, the encoded latents as the decoder sees them (N, C, d, h, w) and N."""
    from diffdef.models.autoencoder import AutoencoderConfig, build_autoencoder
    from diffdef.models.registration import RegistrationConfig, RegistrationNet
    from diffdef.training.ldm import stage as stage_ldm
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
    built = stage_ldm.build_ldm_stage(cfg, data, ae, reg, DistContext(0, 1, torch.device("cpu")))
    run, scale = built.run, built.latent_scale
    if spy is not None:
        original, stage_ldm.prefit_field_basis = stage_ldm.prefit_field_basis, spy
        try:
            last_unet_only = cfg["ldm"]["unet_steps"] - cfg["ldm"]["decoder_warmup_steps"] - 1
            run.step_fn(last_unet_only, torch.Generator().manual_seed(0))  # the pre-fit runs at its end
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

