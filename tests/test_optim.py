import math

import pytest
import torch

from s3l.errors import S3LError
from s3l.optim import build_lr_schedule, build_sgd, lars, sgd


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


def test_lars_scales_each_tensors_update_by_its_trust_ratio_and_skips_excluded_groups():
    torch.manual_seed(0)
    weight, bias = torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(4))
    weight.grad, bias.grad = torch.randn(4, 3), torch.randn(4)
    w0, b0, gw, gb = weight.detach().clone(), bias.detach().clone(), weight.grad.clone(), bias.grad.clone()
    optimizer = lars([{"params": [weight, bias]}], lr=0.5, momentum=0.9, weight_decay=0.01, eta=0.02,
                     exclude_bn_and_bias=True)
    optimizer.step()
    update = gw + 0.01 * w0
    trust = 0.02 * w0.norm() / update.norm()
    torch.testing.assert_close(weight.detach(), w0 - 0.5 * trust * update)
    torch.testing.assert_close(bias.detach(), b0 - 0.5 * gb)  # no decay, no adaptation: plain SGD
    weight.grad, bias.grad = gw, gb  # a second step uses the momentum buffer
    before = weight.detach().clone()
    optimizer.step()
    update2 = gw + 0.01 * before
    buffer = 0.9 * trust * update + 0.02 * before.norm() / update2.norm() * update2
    torch.testing.assert_close(weight.detach(), before - 0.5 * buffer)


def test_sgd_can_exclude_batchnorm_and_biases_from_weight_decay():
    conv, bn = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)
    params = [*conv.parameters(), *bn.parameters()]
    groups = {g["weight_decay"]: g["params"] for g in sgd([{"params": params}], lr=0.1, momentum=0.9,
                                                           weight_decay=1e-4, exclude_bn_and_bias=True).param_groups}
    assert [p.shape for p in groups[1e-4]] == [conv.weight.shape]
    assert len(groups[0.0]) == 3  # conv bias, BN weight, BN bias
    (plain,) = sgd([{"params": params}], lr=0.1, momentum=0.9, weight_decay=1e-4,
                   exclude_bn_and_bias=False).param_groups
    assert plain["weight_decay"] == 1e-4 and len(plain["params"]) == 4  # upstream: decay on everything


def test_warmup_rises_linearly_per_step_then_the_cosine_runs_per_epoch_over_the_rest():
    lrs, interval = _lrs_after_steps("cosine_epoch", 12, epochs=4, steps_per_epoch=3, milestones=None,
                                     warmup_epochs=2, warmup_start_lr=0.01)
    assert interval == "step"
    assert lrs[:6] == pytest.approx([0.01 + (0.1 - 0.01) * step / 6 for step in range(6)])
    # after the warm-up: lr * 0.5 * (1 + cos(pi * (epoch - 2) / (4 - 2))), constant within an epoch
    assert lrs[6:] == pytest.approx([0.1] * 3 + [0.1 * 0.5 * (1 + math.cos(math.pi / 2))] * 3)


def test_a_fixed_lr_group_keeps_its_base_lr():
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD([{"params": params[:1]}, {"params": params[1:], "fixed_lr": True}], lr=0.1)
    scheduler = build_lr_schedule(optimizer, "cosine_epoch", epochs=2, steps_per_epoch=1, milestones=None)
    optimizer.step()
    scheduler["scheduler"].step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.05, 0.1])


@pytest.mark.parametrize("module", ["classifier", "method"])
def test_every_stage_spans_its_schedule_over_the_epochs_it_trains(module):
    """Under trainer.max_epochs the cosine spans the capped epochs, for fine-tuning and pretraining alike."""
    from types import SimpleNamespace

    from s3l.methods.mocov2 import MoCoV2
    from s3l.stages.classify import Classifier

    common = dict(architecture="resnet10", stem="imagenet", lr=0.1, momentum=0.9, weight_decay=0.0,
                  lr_schedule="cosine_step", milestones=None)
    model = (Classifier(num_classes=3, freeze="none", fc_init="default", bn_frozen=False, mixup_alpha=0.0,
                        **common) if module == "classifier"
             else MoCoV2(dim=8, K=16, m=0.99, T=0.2, mlp=True, bn_splits=1, **common))
    model._trainer = SimpleNamespace(max_epochs=2, estimated_stepping_batches=10)  # capped: 2 of 120 epochs
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.1 * 0.5 * (1 + math.cos(math.pi * step / 10)) for step in range(10)])
