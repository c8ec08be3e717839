"""Optimizers (SGD, LARS) and the learning-rate schedules of the original code, as Lightning scheduler configs.

The original scripts step their schedules differently (upstream-s3l.md §5 item 9): MoCo pretraining sets a
cosine LR once per epoch, the fine-tuning script (`main.py`) recomputes it every iteration, SimCLR warms up
linearly per iteration and then runs the cosine per epoch. All are expressed here as a `LambdaLR` factor of
the base LR, with the Lightning `interval` that matches the original granularity, and every stage computes
its schedule with `schedule_length` (the epochs it really trains, `trainer.max_epochs` included).

The pretraining optimizer is the `optimizer` config group: `sgd` (every upstream script) or `lars`
(layer-wise adaptive rate scaling, You et al. 2017, as the BYOL and SimCLR papers train at large batch).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from s3l.errors import S3LError

if TYPE_CHECKING:  # data-loading code imports this module's names through s3l.schema: keep it light
    import lightning as L

LR_SCHEDULES = ("cosine_epoch", "cosine_step", "step", "constant")
ParameterGroup = dict  # {"params": [...], optional "fixed_lr": bool, "weight_decay": ..., "lars_exclude": ...}


def build_sgd(
    params: Iterable[torch.nn.Parameter], lr: float, momentum: float, weight_decay: float
) -> torch.optim.SGD:
    """SGD over the trainable parameters, with weight decay on all of them.

    As upstream, BN weights, biases and heads are decayed too (§5 item 10); frozen parameters are left out.
    """
    trainable = [p for p in params if p.requires_grad]
    return torch.optim.SGD(trainable, lr=lr, momentum=momentum, weight_decay=weight_decay)


def split_bn_and_bias(groups: list[ParameterGroup]) -> list[ParameterGroup]:
    """Each group split in two: weight matrices and kernels, and the 1-d tensors (BatchNorm weights and
    every bias), which get no weight decay and no LARS adaptation (`lars_exclude`)."""
    split = []
    for group in groups:
        params = group["params"]
        for one_d, extra in ((False, {}), (True, {"weight_decay": 0.0, "lars_exclude": True})):
            chosen = [p for p in params if (p.ndim <= 1) == one_d]
            if chosen:
                split.append({**group, "params": chosen, **extra})
    return split


def sgd(groups: list[ParameterGroup], *, lr: float, momentum: float, weight_decay: float,
        exclude_bn_and_bias: bool) -> torch.optim.SGD:
    """`optimizer=sgd`: SGD with momentum (every upstream S3L script)."""
    groups = split_bn_and_bias(groups) if exclude_bn_and_bias else groups
    return torch.optim.SGD(_plain(groups), lr=lr, momentum=momentum, weight_decay=weight_decay)


def lars(groups: list[ParameterGroup], *, lr: float, momentum: float, weight_decay: float, eta: float,
         exclude_bn_and_bias: bool) -> LARS:
    """`optimizer=lars`: LARS, by default with BatchNorm and biases excluded from decay and adaptation."""
    groups = split_bn_and_bias(groups) if exclude_bn_and_bias else groups
    return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta)


def _plain(groups: list[ParameterGroup]) -> list[ParameterGroup]:
    # torch's optimizers keep unknown group keys; only LARS reads lars_exclude.
    return [{k: v for k, v in group.items() if k != "lars_exclude"} for group in groups]


class LARS(torch.optim.Optimizer):
    """SGD with momentum whose update of each tensor is scaled by the trust ratio
    eta * ||w|| / ||g + wd * w|| (1 where either norm is 0); groups with `lars_exclude` get plain SGD.

    The update, per tensor: g <- g + wd * w; g <- trust * g (unless excluded); mu <- momentum * mu + g;
    w <- w - lr * mu (the barlowtwins / BYOL form, with the ratio computed on the decayed gradient).
    """

    def __init__(self, params, lr: float, momentum: float, weight_decay: float, eta: float) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta,
                                  "lars_exclude": False})

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad.add(p, alpha=group["weight_decay"])
                if not group["lars_exclude"]:
                    weight_norm, update_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(update)
                    trust = torch.where((weight_norm > 0) & (update_norm > 0),
                                        group["eta"] * weight_norm / update_norm, torch.ones_like(weight_norm))
                    update.mul_(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buffer = state["momentum_buffer"]
                buffer.mul_(group["momentum"]).add_(update)
                p.add_(buffer, alpha=-group["lr"])
        return loss


def schedule_length(trainer: L.Trainer) -> tuple[int, int]:
    """(epochs, optimizer steps per epoch) the stage really trains: its epochs capped by trainer.max_epochs.

    Every stage's LR schedule spans these, so a capped smoke run sees the whole schedule, compressed.
    """
    epochs = max(1, int(trainer.max_epochs))
    return epochs, max(1, int(trainer.estimated_stepping_batches) // epochs)


def _cosine(progress: float) -> float:
    # Clamped: a stray extra scheduler step must not make the cosine rise again.
    return 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def _lr_factor(
    schedule: str, epochs: int, steps_per_epoch: int, milestones: list[int] | None, start_epoch: int = 0
) -> tuple[Callable[[int], float], str]:
    """The factor of the base LR after `start_epoch` (a warm-up before it), by epoch or by step."""
    span = max(1, epochs - start_epoch)
    if schedule == "cosine_epoch":
        return (lambda epoch: _cosine((epoch - start_epoch) / span)), "epoch"
    if schedule == "cosine_step":
        return (lambda step: _cosine((step - start_epoch * steps_per_epoch) / (span * steps_per_epoch))), "step"
    if schedule == "step":
        drops = sorted(milestones or [])
        return (lambda epoch: 0.1 ** sum(epoch >= m for m in drops)), "epoch"
    if schedule == "constant":
        return (lambda _: 1.0), "epoch"
    raise S3LError(f"unknown lr_schedule '{schedule}': use one of {', '.join(LR_SCHEDULES)}")


def _with_warmup(factor: Callable[[int], float], interval: str, steps_per_epoch: int, warmup_epochs: int,
                 start_factor: float) -> Callable[[int], float]:
    """Per step: linear from `start_factor` to 1 over the warm-up epochs, then `factor` (of the epoch for an
    epoch-granular schedule, as upstream SimCLR's cosine uses the integer epoch)."""
    warmup_steps = warmup_epochs * steps_per_epoch

    def per_step(step: int) -> float:
        if step < warmup_steps:
            return start_factor + (1.0 - start_factor) * step / warmup_steps
        return factor(step if interval == "step" else step // steps_per_epoch)

    return per_step


def build_lr_schedule(
    optimizer: torch.optim.Optimizer,
    schedule: str,
    epochs: int,
    steps_per_epoch: int,
    milestones: list[int] | None,
    warmup_epochs: int = 0,
    warmup_start_lr: float = 0.0,
) -> dict:
    """A Lightning `lr_scheduler` config dict for one of `LR_SCHEDULES`, after an optional linear warm-up.

    - `cosine_epoch` (MoCo pretraining): `base * 0.5 * (1 + cos(pi * epoch / epochs))`, set at each epoch start.
    - `cosine_step` (fine-tuning `main.py`): the same cosine of `epoch + i / steps_per_epoch`, set every iteration.
    - `step`: `base * 0.1 ** (number of milestones <= epoch)`.
    - `constant`: `base`.
    With `warmup_epochs` W > 0 (SimCLR), the LR rises per step from `warmup_start_lr` to `base` over W epochs and
    the cosine then runs over the remaining epochs. Parameter groups with `fixed_lr` (SimSiam's predictor)
    keep their base LR throughout.
    """
    if epochs < 1 or steps_per_epoch < 1:
        raise S3LError(
            f"the LR schedule needs epochs >= 1 and steps per epoch >= 1, got {epochs} and {steps_per_epoch}"
        )
    if warmup_epochs >= epochs:
        raise S3LError(f"warmup_epochs={warmup_epochs} leaves no epoch of the {epochs} to train after the warm-up")
    factor, interval = _lr_factor(schedule, epochs, steps_per_epoch, milestones, warmup_epochs)
    if warmup_epochs:
        base = optimizer.param_groups[0]["lr"]
        factor = _with_warmup(factor, interval, steps_per_epoch, warmup_epochs, warmup_start_lr / base)
        interval = "step"
    factors = [(lambda _: 1.0) if group.get("fixed_lr") else factor for group in optimizer.param_groups]
    return {"scheduler": LambdaLR(optimizer, factors), "interval": interval}


def trainable_groups(module: nn.Module, fixed_lr: Iterable[nn.Module] = ()) -> list[ParameterGroup]:
    """The trainable parameters of `module` as optimizer groups: one group, plus one `fixed_lr` group for the
    parameters of the modules in `fixed_lr` (excluded from the LR schedule)."""
    fixed = {id(p) for sub in fixed_lr for p in sub.parameters()}
    trainable = [p for p in module.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if id(p) not in fixed]}]
    pinned = [p for p in trainable if id(p) in fixed]
    return groups + ([{"params": pinned, "fixed_lr": True}] if pinned else [])
