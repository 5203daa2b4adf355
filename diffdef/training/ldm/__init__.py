"""Stage ``ldm``: the conditional latent diffusion model and the DVF decoder (DESIGN.md parts 2 and 3).

The phases (:mod:`.phases`), one step counter so a killed run resumes in any of them:

1. ``unet_steps`` steps of L_diff (:mod:`.diffusion_loss`): the UNet learns the training images' latents
   (:mod:`.latents`), conditioned.
2. With ``basis_prefit_steps`` > 0 (not in the paper), once, after the last step that trains L_diff only, the
   decoder's field basis is fitted alone to the exact neighbourhood-mean field of each training condition
   (:mod:`.field_targets`, the first-order minimiser of L_morph; :mod:`.basis_prefit`). Within the last
   ``decoder_warmup_steps`` of the L_diff steps (``default`` has none), the whole decoder is also fitted to those
   targets from each training image's latent.
3. ``joint_steps`` steps of L_diff on the UNet plus ``alpha * L_morph + beta * bending`` on the DVF decoder
   (:mod:`.morphology`, the paper's joint phase). ``default`` has none (docs/METHOD.md says why).

:mod:`.stage` wires them into a ``StageRun``; :mod:`.models` builds the denoiser and DVF decoder of a config.
"""

from diffdef.training.ldm.models import denoiser_config, dvf_decoder_config
from diffdef.training.ldm.stage import LDMStage, build_ldm_stage

__all__ = ["LDMStage", "build_ldm_stage", "denoiser_config", "dvf_decoder_config"]
