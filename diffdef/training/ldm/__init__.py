"""Stage ``ldm``: the conditional latent diffusion model and the DVF decoder (DESIGN.md parts 2 and 3).

The phases (:mod:`.phases`), one step counter so a killed run resumes in any of them:

1. ``unet_steps`` steps of L_diff (:mod:`.diffusion_loss`): the UNet learns the training images' latents
   (:mod:`.latents`), conditioned.
2. Within the last ``decoder_warmup_steps`` of them (not in the paper), the DVF decoder is also fitted, from a
   training image's latent, to the exact neighbourhood-mean field of its condition (:mod:`.field_targets`): the
   first-order minimiser of L_morph. At the first of those steps, with ``basis_prefit_steps`` > 0, the decoder's
   field basis is first fitted alone to the same targets (:mod:`.basis_prefit`).
3. ``joint_steps`` steps of L_diff on the UNet plus ``alpha * L_morph + beta * bending`` on the DVF decoder
   (:mod:`.morphology`, the paper's joint phase). ``default`` has none (docs/METHOD.md says why).

:mod:`.stage` wires them into a ``StageRun``; :mod:`.models` builds the denoiser and DVF decoder of a config.
"""

from diffdef.training.ldm.models import denoiser_config, dvf_decoder_config
from diffdef.training.ldm.stage import LDMStage, build_ldm_stage

__all__ = ["LDMStage", "build_ldm_stage", "denoiser_config", "dvf_decoder_config"]
