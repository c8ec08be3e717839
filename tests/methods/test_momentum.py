"""Target networks: the EMA moves by its formula, along its schedule, and never receives gradients."""

import math

import pytest
import torch
from torch import nn

from s3l.methods.momentum import ema_update_, frozen_copy_of, momentum_at


def test_constant_momentum_is_mocos_m_at_every_step():
    assert [momentum_at(s, 100, 0.999, 1.0, "constant") for s in (0, 50, 100)] == [0.999] * 3


def test_cosine_momentum_rises_from_base_to_final_as_byol():
    base, total = 0.996, 100
    for step in (0, 25, 50, 100, 150):
        expected = 1 - (1 - base) * (math.cos(math.pi * min(step, total) / total) + 1) / 2
        assert momentum_at(step, total, base, 1.0, "cosine") == pytest.approx(expected)
    assert momentum_at(0, total, base, 1.0, "cosine") == pytest.approx(base)
    assert momentum_at(total, total, base, 1.0, "cosine") == pytest.approx(1.0)


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="constant, cosine"):
        momentum_at(0, 10, 0.9, 1.0, "linear")


def test_ema_update_moves_every_parameter_by_the_formula_and_leaves_buffers():
    torch.manual_seed(0)
    online, target = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), nn.Sequential(nn.Linear(3, 4),
                                                                                         nn.BatchNorm1d(4))
    target[1].running_mean.fill_(7.0)
    before = [p.clone() for p in target.parameters()]
    ema_update_(target, online, 0.75)
    for after, old, new in zip(target.parameters(), before, online.parameters()):
        torch.testing.assert_close(after, 0.75 * old + 0.25 * new)
    assert torch.equal(target[1].running_mean, torch.full((4,), 7.0))


def test_a_frozen_copy_is_equal_and_receives_no_gradient():
    online, target = nn.Linear(3, 2), nn.Linear(3, 2)
    frozen_copy_of(online, target)
    assert torch.equal(online.weight, target.weight)
    assert not any(p.requires_grad for p in target.parameters())
