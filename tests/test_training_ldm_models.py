"""The denoiser and DVF decoder of a training config (diffdef.training.ldm.models)."""

import pytest

from diffdef.training.config import preset_config
from diffdef.training.ldm import dvf_decoder_config


def test_dvf_decoder_config_carries_the_field_basis():
    cfg = preset_config("default")
    dec = dvf_decoder_config(cfg, (10, 14, 10))
    assert dec.basis.rank == 4 and dec.basis.basis_shape == (40, 56, 40) and dec.basis.latent_shape == (10, 14, 10)
    assert dec.diffeomorphic and dec.parts == "basis" and not dec.has_decoder and dec.latent_shape is None
    cfg["ldm"]["basis_down"] = 3  # 80 is not a multiple of 3
    with pytest.raises(ValueError, match="ldm.basis_down"):
        dvf_decoder_config(cfg, (10, 14, 10))
    cfg["ldm"].update(basis_down=2, integration_down=3)
    with pytest.raises(ValueError, match="ldm.integration_down"):
        dvf_decoder_config(cfg, (10, 14, 10))
    cfg["ldm"].update(basis_rank=0, latent_centre=False, integration_down=2, dvf_decoder="decoder")
    assert dvf_decoder_config(cfg).basis is None
    paper = preset_config("paper")["ldm"]
    assert paper["basis_rank"] == 0 and paper["dvf_decoder"] == "decoder"  # the paper's decoder, unchanged
