"""The ldm stage's phase plan (diffdef.training.ldm.phases)."""

import pytest

from diffdef.training.config import preset_config
from diffdef.training.ldm.phases import PhasePlan


def test_default_plan_prefits_at_its_last_unet_step_and_has_no_joint_phase():
    plan = PhasePlan.from_config(preset_config("default")["ldm"])
    assert (plan.total, plan.warmup_start) == (600, 599)
    assert [s for s in range(plan.total) if plan.is_warmup(s)] == [599]
    assert [s for s in range(plan.total) if plan.prefit_at(s)] == [599]
    assert not any(plan.is_joint(s) for s in range(plan.total))


def test_tiny_plan_has_every_phase():
    plan = PhasePlan.from_config(preset_config("tiny")["ldm"])  # 6 unet steps, the last 2 warm-up, 4 joint
    assert [(plan.is_warmup(s), plan.is_joint(s), plan.prefit_at(s)) for s in range(plan.total)] == (
        [(False, False, False)] * 4 + [(True, False, True), (True, False, False)] + [(False, True, False)] * 4)


def test_paper_plan_has_no_warm_up():
    plan = PhasePlan.from_config(preset_config("paper")["ldm"])
    assert plan.warmup_start == plan.unet_steps == 50_000 and plan.total == 100_000
    assert not plan.is_warmup(49_999) and plan.is_joint(50_000) and not plan.prefit_at(50_000)


def test_impossible_plans_are_refused():
    with pytest.raises(ValueError, match=r"decoder_warmup_steps \(7\) must be in 0..ldm.unet_steps \(6\)"):
        PhasePlan(6, 0, 7, False)
    with pytest.raises(ValueError, match="basis_prefit_steps > 0 needs ldm.decoder_warmup_steps > 0"):
        PhasePlan(6, 0, 0, True)
    with pytest.raises(ValueError, match=">= 0"):
        PhasePlan(-1, 0, 0, False)
