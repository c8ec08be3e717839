"""Target networks that follow an online network by an exponential moving average (MoCo's key encoder,
BYOL's target): theta_target <- tau * theta_target + (1 - tau) * theta_online, parameters only (BatchNorm
statistics of a target follow its own forward passes, as in both papers' code).

MoCo keeps tau = m constant; BYOL raises it from its base to 1 along a cosine over the training steps:
tau_k = 1 - (1 - tau_base) * (cos(pi * k / K) + 1) / 2.
"""

from __future__ import annotations

import math

import torch
from torch import nn

MOMENTUM_SCHEDULES = ("constant", "cosine")


def momentum_at(step: int, total_steps: int, base: float, final: float, schedule: str) -> float:
    """tau after `step` of `total_steps` optimizer steps: `base` throughout, or the cosine from base to final."""
    if schedule == "constant":
        return base
    if schedule != "cosine":
        raise ValueError(f"unknown momentum schedule '{schedule}': use one of {', '.join(MOMENTUM_SCHEDULES)}")
    progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


@torch.no_grad()
def ema_update_(target: nn.Module, online: nn.Module, tau: float) -> None:
    """theta_target <- tau * theta_target + (1 - tau) * theta_online, in place, for every parameter pair."""
    params_target = [p.data for p in target.parameters()]
    params_online = [p.data for p in online.parameters()]
    torch._foreach_mul_(params_target, tau)
    torch._foreach_add_(params_target, params_online, alpha=1.0 - tau)


def frozen_copy_of(online: nn.Module, target: nn.Module) -> nn.Module:
    """Make `target` an exact, gradient-free copy of `online` (both built alike); returns `target`."""
    target.load_state_dict(online.state_dict())
    for param in target.parameters():
        param.requires_grad = False
    return target
