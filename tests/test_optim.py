import math

import pytest
import torch

from s3l.errors import S3LError
from s3l.optim import build_lr_schedule, build_sgd


def _lrs_after_steps(schedule: str, steps: int, **kwargs) -> tuple[list[float], str]:
    optimizer = build_sgd([torch.nn.Parameter(torch.zeros(2))], lr=0.1, momentum=0.9, weight_decay=5e-4)
    config = build_lr_schedule(optimizer, schedule, **kwargs)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        config["scheduler"].step()
    return lrs, config["interval"]


def test_cosine_epoch_sets_moco_lr_once_per_epoch():
    lrs, interval = _lrs_after_steps("cosine_epoch", 10, epochs=10, steps_per_epoch=7, milestones=None)
    assert interval == "epoch"
    expected = [0.1 * 0.5 * (1 + math.cos(math.pi * epoch / 10)) for epoch in range(10)]
    assert lrs == pytest.approx(expected)


def test_cosine_step_follows_fractional_epoch_every_iteration():
    epochs, steps_per_epoch = 3, 4
    lrs, interval = _lrs_after_steps(
        "cosine_step", 12, epochs=epochs, steps_per_epoch=steps_per_epoch, milestones=None
    )
    assert interval == "step"
    expected = []
    for epoch in range(epochs):
        for i in range(steps_per_epoch):
            e = epoch + i / steps_per_epoch
            expected.append(0.1 * 0.5 * (1 + math.cos(math.pi * e / epochs)))
    assert lrs == pytest.approx(expected)


def test_cosine_step_does_not_rise_after_the_last_step():
    lrs, _ = _lrs_after_steps("cosine_step", 6, epochs=1, steps_per_epoch=4, milestones=None)
    assert lrs[4:] == pytest.approx([0.0, 0.0])


def test_step_schedule_drops_tenfold_at_each_milestone():
    lrs, interval = _lrs_after_steps("step", 6, epochs=6, steps_per_epoch=5, milestones=[2, 4])
    assert interval == "epoch"
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_step_schedule_with_late_milestones_stays_constant_like_the_warmup():
    lrs, _ = _lrs_after_steps("step", 10, epochs=10, steps_per_epoch=5, milestones=[60, 80])
    assert lrs == pytest.approx([0.1] * 10)


def test_constant_schedule_keeps_base_lr():
    lrs, _ = _lrs_after_steps("constant", 4, epochs=4, steps_per_epoch=3, milestones=None)
    assert lrs == pytest.approx([0.1] * 4)


def test_unknown_schedule_lists_valid_ones():
    optimizer = build_sgd([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9, weight_decay=0.0)
    with pytest.raises(S3LError, match="cosine_epoch, cosine_step, step, constant"):
        build_lr_schedule(optimizer, "poly", epochs=3, steps_per_epoch=2, milestones=None)


def test_sgd_skips_frozen_params_and_decays_all_trainable_ones():
    bn = torch.nn.BatchNorm1d(3)
    frozen = torch.nn.Parameter(torch.ones(2), requires_grad=False)
    optimizer = build_sgd([bn.weight, bn.bias, frozen], lr=0.5, momentum=0.9, weight_decay=1e-4)
    (group,) = optimizer.param_groups
    assert [p is frozen for p in group["params"]] == [False, False]
    assert group["weight_decay"] == 1e-4 and group["momentum"] == 0.9 and group["lr"] == 0.5
