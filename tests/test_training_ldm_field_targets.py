"""The exact targets' field bank and its neighbourhood means (diffdef.training.ldm.field_targets)."""

import pytest
import torch
from ldm_helpers import BiasedRegistration

from diffdef.training.ldm.field_targets import FieldBank, check_bank_size, identity_bias, registration_fields


def test_registration_fields_less_the_identity_bias():
    shape = (4, 6, 4)
    reg = BiasedRegistration(shape)
    g = torch.Generator().manual_seed(1)
    template, images = torch.rand(1, 1, *shape, generator=g), torch.rand(5, 1, *shape, generator=g)
    truth = (images - template).expand(-1, 3, -1, -1, -1)
    torch.testing.assert_close(identity_bias(reg, template), reg.bias)
    plain = registration_fields(reg, template, images, torch.device("cpu"), chunk=2)
    corrected = registration_fields(reg, template, images, torch.device("cpu"), chunk=2, bias_correction=True)
    torch.testing.assert_close(plain, truth + reg.bias)
    torch.testing.assert_close(corrected, truth)


def test_bank_target_is_the_weighted_mean_of_the_fields_and_built_once():
    from types import SimpleNamespace

    from diffdef.training.data import neighbour_weights

    shape = (4, 6, 4)
    reg = BiasedRegistration(shape)
    g = torch.Generator().manual_seed(3)
    template, images = torch.rand(1, 1, *shape, generator=g), torch.rand(6, 1, *shape, generator=g)
    conditions = torch.tensor([[0.1], [0.2], [0.3], [0.6], [0.8], [0.9]])
    data = SimpleNamespace(images=images, labels=None)
    bank = FieldBank("network", data, reg, template, conditions, 0.1, torch.device("cpu"), bias_correction=True)
    fields = bank.fields
    assert fields is bank.fields  # built once
    weights = neighbour_weights(conditions, torch.tensor([0.25]), 0.1)
    want = (weights.view(-1, 1, 1, 1, 1) * (images - template).expand(-1, 3, -1, -1, -1)).sum(0, keepdim=True)
    torch.testing.assert_close(bank.target(torch.tensor([0.25])), want)
    assert float(weights[:3].sum()) > 0.9  # the neighbourhood of 0.25 is the first three subjects
    with pytest.raises(ValueError, match="field_source must be one of"):
        FieldBank("atlas", data, reg, template, conditions, 0.1, torch.device("cpu"), True)
    with pytest.raises(ValueError, match="needs the training subjects' label maps"):
        FieldBank("labels", data, reg, template, conditions, 0.1, torch.device("cpu"), True)


def test_oversized_bank_is_refused_naming_the_way_out():
    images = torch.empty(2000, 1, 160, 224, 160, device="meta")  # the paper grid's cohort: 2000 x 3 x 23 MB
    with pytest.raises(ValueError, match="would hold .* GB for 2000 images.*decoder_warmup_steps=0"):
        check_bank_size(images)
    check_bank_size(torch.empty(120, 1, 80, 112, 80, device="meta"))  # the default's bank: 1.0 GB
