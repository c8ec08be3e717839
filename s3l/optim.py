"""SGD and the learning-rate schedules of the original code, as Lightning scheduler configs.

The original scripts step their schedules differently (upstream-s3l.md §5 item 9): MoCo pretraining sets a
cosine LR once per epoch, the fine-tuning script (`main.py`) recomputes it every iteration. Both are expressed
here as a `LambdaLR` factor of the base LR, with the Lightning `interval` that matches the original granularity.
"""

import math
from collections.abc import Callable, Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

from s3l.errors import S3LError

LR_SCHEDULES = ("cosine_epoch", "cosine_step", "step", "constant")


def build_sgd(
    params: Iterable[torch.nn.Parameter], lr: float, momentum: float, weight_decay: float
) -> torch.optim.SGD:
    """SGD over the trainable parameters, with weight decay on all of them.

    As upstream, BN weights, biases and heads are decayed too (§5 item 10); frozen parameters are left out.
    """
    trainable = [p for p in params if p.requires_grad]
    return torch.optim.SGD(trainable, lr=lr, momentum=momentum, weight_decay=weight_decay)


def _cosine(progress: float) -> float:
    # Clamped: a stray extra scheduler step must not make the cosine rise again.
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _lr_factor(
    schedule: str, epochs: int, steps_per_epoch: int, milestones: list[int] | None
) -> tuple[Callable[[int], float], str]:
    if schedule == "cosine_epoch":
        return (lambda epoch: _cosine(epoch / epochs)), "epoch"
    if schedule == "cosine_step":
        total_steps = epochs * steps_per_epoch
        return (lambda step: _cosine(step / total_steps)), "step"
    if schedule == "step":
        drops = sorted(milestones or [])
        return (lambda epoch: 0.1 ** sum(epoch >= m for m in drops)), "epoch"
    if schedule == "constant":
        return (lambda _: 1.0), "epoch"
    raise S3LError(f"unknown lr_schedule '{schedule}': use one of {', '.join(LR_SCHEDULES)}")


def build_lr_schedule(
    optimizer: torch.optim.Optimizer,
    schedule: str,
    epochs: int,
    steps_per_epoch: int,
    milestones: list[int] | None,
) -> dict:
    """A Lightning `lr_scheduler` config dict for one of `LR_SCHEDULES`.

    - `cosine_epoch` (MoCo pretraining): `base * 0.5 * (1 + cos(pi * epoch / epochs))`, set at each epoch start.
    - `cosine_step` (fine-tuning `main.py`): the same cosine of `epoch + i / steps_per_epoch`, set every iteration.
    - `step`: `base * 0.1 ** (number of milestones <= epoch)`.
    - `constant`: `base`.
    """
    if epochs < 1 or steps_per_epoch < 1:
        raise S3LError(
            f"the LR schedule needs epochs >= 1 and steps per epoch >= 1, got {epochs} and {steps_per_epoch}"
        )
    factor, interval = _lr_factor(schedule, epochs, steps_per_epoch, milestones)
    return {"scheduler": LambdaLR(optimizer, factor), "interval": interval}
