"""The registration stage's held-out check (diffdef.training.stage_reg.check_registration)."""

import warnings

import pytest
import torch

from diffdef.template import load_template
from diffdef.training.stage_reg import HELD_OUT_FIELD_SEED, WEAK_REGISTRATION_RATIO, check_registration
from diffdef.training.synthetic_pairs import field_bank, synthetic_pairs


class _ZeroNet(torch.nn.Module):
    def forward(self, moving, fixed):
        return torch.zeros(len(moving), 3, *moving.shape[2:])


class _ReplayNet(torch.nn.Module):
    """Returns the given fields in order (one per call), plus ``noise`` voxels along D."""

    def __init__(self, fields, noise=0.0):
        super().__init__()
        self.fields, self.noise, self.calls = fields, noise, 0

    def forward(self, moving, fixed):
        out = self.fields[self.calls:self.calls + 1] + torch.tensor([self.noise, 0.0, 0.0]).view(1, 3, 1, 1, 1)
        self.calls += 1
        return out


def _truth(template, n_fields, pairs):
    bank = field_bank(template, n_fields, HELD_OUT_FIELD_SEED)
    return synthetic_pairs(template.torch("t1"), bank, pairs, torch.Generator().manual_seed(HELD_OUT_FIELD_SEED))[2]


def test_a_network_that_does_not_register_is_flagged_and_a_good_one_is_not():
    template = load_template("4mm")
    cpu = torch.device("cpu")
    with pytest.warns(UserWarning, match="barely registers: .* 1.00 of the zero field"):
        assert check_registration(_ZeroNet(), template, cpu, n_fields=1, pairs=2) == pytest.approx(1.0)
    truth = _truth(template, 1, 2)
    assert float(truth.norm(dim=1).mean()) > 0.1  # non-trivial fields, so the ratio means something
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert check_registration(_ReplayNet(truth), template, cpu, n_fields=1, pairs=2) == pytest.approx(0.0, abs=1e-6)
    assert not [w for w in caught if "barely registers" in str(w.message)]  # a perfect network is not flagged
    # a constant error of e voxels gives the ratio e / (mean true length) exactly
    zero = float(sum(truth[k].norm(dim=0)[template.torch("t1")[0, 0] > 0.1].mean() for k in range(2)) / 2)
    ratio = check_registration(_ReplayNet(truth, noise=0.5 * WEAK_REGISTRATION_RATIO * zero), template, cpu,
                               n_fields=1, pairs=2)
    assert ratio == pytest.approx(0.5 * WEAK_REGISTRATION_RATIO, rel=1e-4)
