"""SimCLR pretraining (Chen et al. 2020) as the S3L upstream configures it: one encoder whose fc is the MLP
head d -> d -> 128, both views of every image in one batch, and the NT-Xent loss in which each view's
positive is its other view and the negatives are all other views (`s3l.methods.losses.nt_xent`).

Upstream computed the loss per GPU (local negatives) through SupCon's loss, which scales it by
T / base_temperature with base_temperature 0.07; both are settings here (`negatives`, `base_temperature`).
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from s3l.methods.base import SSLMethod
from s3l.methods.losses import nt_xent
from s3l.models.heads import mlp_head
from s3l.schema import PositiveFloat, PositiveInt


class SimCLR(SSLMethod):
    """SimCLR: an encoder with a projection head trained with NT-Xent over both views of the batch."""

    forward_cost = 6.0  # both views: forward + backward

    def __init__(self, *, dim: PositiveInt, hidden_dim: PositiveInt | None, T: PositiveFloat,
                 negatives: Literal["global", "local"], base_temperature: PositiveFloat | None,
                 **settings) -> None:
        """`dim`: embedding size; `hidden_dim`: the head's hidden width (None: the feature dim, upstream);
        `T`: temperature; `negatives`: the whole global batch, or this process's share only;
        `base_temperature`: scale the loss by T / base_temperature (upstream SupCon: 0.07; None: unscaled)."""
        super().__init__(**settings)
        self.encoder = self.make_encoder(lambda d: mlp_head(d, hidden_dim, dim, layers=2, batch_norm=False))

    @property
    def backbone(self) -> nn.Module:
        return self.encoder.backbone

    def training_step(self, batch: tuple[list[Tensor], Tensor], batch_idx: int) -> Tensor:
        (view1, view2), _ = batch
        z1, z2 = self.encode_views(self.encoder, [view1, view2])
        hp = self.hparams
        scale = hp.T / hp.base_temperature if hp.base_temperature else 1.0
        loss = nt_xent(z1, z2, hp.T, hp.negatives, scale)
        self.log_training(loss)
        return loss
