"""BYOL pretraining (Grill et al. 2020): an online network (encoder, projector, predictor) regresses the
projection of the other view computed by a target network, the online encoder's exponential moving average,
with the symmetric loss 2 - 2 cos (`s3l.methods.losses.byol_loss`); no negatives.

The S3L upstream (adapted from lucidrains' byol-pytorch) fixed the EMA decay at 0.99 and ignored its hidden-size
flag (always 4096); both are settings here, defaulting to the BYOL paper (configs/method/byol.yaml).
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from torch import Tensor, nn

from s3l.methods.base import SSLMethod
from s3l.methods.losses import byol_loss
from s3l.methods.momentum import MOMENTUM_SCHEDULES, ema_update_, momentum_at
from s3l.models.heads import mlp_head
from s3l.schema import PositiveInt, UnitFloat


class BYOL(SSLMethod):
    """BYOL: online encoder + projector + predictor, a target encoder + projector updated by EMA."""

    forward_cost = 8.0  # online network on both views: forward + backward (6); target on both: forward (2)

    def __init__(self, *, dim: PositiveInt, hidden_dim: PositiveInt, tau_base: UnitFloat, tau_final: UnitFloat,
                 tau_schedule: Literal[MOMENTUM_SCHEDULES], **settings) -> None:  # type: ignore[valid-type]
        """`dim`: projection size; `hidden_dim`: the projector's and predictor's hidden width; `tau_*`: the
        target's EMA decay, `constant` at tau_base or a `cosine` from tau_base to tau_final over training."""
        super().__init__(**settings)
        self.encoder = self.make_encoder(lambda d: mlp_head(d, hidden_dim, dim, layers=2, batch_norm=True))
        self.predictor = mlp_head(dim, hidden_dim, dim, layers=2, batch_norm=True)
        self.target = copy.deepcopy(self.encoder)
        for param in self.target.parameters():
            param.requires_grad = False

    @property
    def backbone(self) -> nn.Module:
        return self.encoder.backbone

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.encoder, self.target)]

    def training_step(self, batch: tuple[list[Tensor], Tensor], batch_idx: int) -> Tensor:
        (view1, view2), _ = batch
        z1, z2 = self.encode_views(self.encoder, [view1, view2])
        p1, p2 = self.predictor(z1), self.predictor(z2)
        with torch.no_grad():
            t1, t2 = self.encode_views(self.target, [view1, view2])
        loss = byol_loss(p1, t2) + byol_loss(p2, t1)  # upstream: the two terms summed, each a batch mean
        self.log_training(loss, tau=self.tau(self.trainer.global_step))
        return loss

    def tau(self, step: int) -> float:
        """The EMA decay of the update after optimizer step `step` (0-based) of the stage's steps."""
        hp = self.hparams
        total = int(self.trainer.estimated_stepping_batches)
        return momentum_at(step, total, hp.tau_base, hp.tau_final, hp.tau_schedule)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # After the optimizer step (global_step counts it already), as BYOL's update_moving_average.
        ema_update_(self.target, self.encoder, self.tau(self.trainer.global_step - 1))
