"""The ldm stage's phase plan (diffdef.training.ldm.phases)."""

import pytest

from diffdef.training.config import preset_config
from diffdef.training.ldm.phases import PhasePlan


def test_default_plan_prefits_after_its_last_unet_step_and_trains_nothing_else_on_the_decoder():
    plan = PhasePlan.from_config(preset_config("default")["ldm"])
    assert (plan.total, plan.prefit_step) == (600, 599)
    assert [s for s in range(plan.total) if plan.prefit_after(s)] == [599]
    assert not any(plan.is_warmup(s) or plan.is_joint(s) for s in range(plan.total))


def test_tiny_plan_has_every_phase_and_prefits_before_the_warm_up():
    plan = PhasePlan.from_config(preset_config("tiny")["ldm"])  # 6 unet steps, the last 2 warm-up, 4 joint
    assert [(plan.is_warmup(s), plan.is_joint(s), plan.prefit_after(s)) for s in range(plan.total)] == (
        [(False, False, False)] * 3 + [(False, False, True)] + [(True, False, False)] * 2
        + [(False, True, False)] * 4)


def test_paper_plan_has_no_warm_up_and_no_prefit():
    plan = PhasePlan.from_config(preset_config("paper")["ldm"])
    assert plan.warmup_start == plan.unet_steps == 50_000 and plan.total == 100_000
    assert plan.prefit_step is None and not any(plan.prefit_after(s) for s in (49_999, 50_000))
    assert not plan.is_warmup(49_999) and plan.is_joint(50_000)


def test_impossible_plans_are_refused():
    with pytest.raises(ValueError, match=r"decoder_warmup_steps \(7\) must be in 0..ldm.unet_steps \(6\)"):
        PhasePlan(6, 0, 7, False)
    with pytest.raises(ValueError, match=r"needs ldm.unet_steps \(6\) > ldm.decoder_warmup_steps \(6\)"):
        PhasePlan(6, 0, 6, True)
    with pytest.raises(ValueError, match=">= 0"):
        PhasePlan(-1, 0, 0, False)
    assert PhasePlan(6, 0, 5, True).prefit_step == 0
