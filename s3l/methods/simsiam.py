"""SimSiam pretraining (Chen and He 2021): a Siamese encoder with a 3-layer projector and a 2-layer
bottleneck predictor; each view's prediction regresses the other view's projection under a stop-gradient,
with the symmetric negative cosine (`s3l.methods.losses.negative_cosine`). No negatives, no target network.

The upstream ships an unused SimSam builder; this follows the SimSiam paper and its official code (BatchNorm in
every projector layer, the output one without affine parameters, and the predictor's LR kept fixed).
"""

from __future__ import annotations

from torch import Tensor, nn

from s3l.methods.base import SSLMethod
from s3l.methods.losses import negative_cosine
from s3l.models.heads import mlp_head
from s3l.optim import ParameterGroup, trainable_groups
from s3l.schema import PositiveInt


class SimSiam(SSLMethod):
    """SimSiam: encoder + projector, predictor, stop-gradient, symmetric negative cosine."""

    forward_cost = 6.0  # both views: forward + backward

    def __init__(self, *, dim: PositiveInt, hidden_dim: PositiveInt | None, projector_layers: PositiveInt,
                 predictor_hidden_dim: PositiveInt, fix_predictor_lr: bool, **settings) -> None:
        """`dim`: projection size; `hidden_dim`: the projector's hidden width (None: the feature dim, as the
        official code); `projector_layers`: 3 in the paper; `predictor_hidden_dim`: the bottleneck (dim / 4);
        `fix_predictor_lr`: the predictor keeps its base LR while the rest follows the schedule."""
        super().__init__(**settings)
        self.encoder = self.make_encoder(lambda d: mlp_head(d, hidden_dim, dim, layers=projector_layers,
                                                            batch_norm=True, last_batch_norm=True))
        self.predictor = mlp_head(dim, predictor_hidden_dim, dim, layers=2, batch_norm=True)

    @property
    def backbone(self) -> nn.Module:
        return self.encoder.backbone

    def parameter_groups(self) -> list[ParameterGroup]:
        return trainable_groups(self, fixed_lr=[self.predictor] if self.hparams.fix_predictor_lr else [])

    def training_step(self, batch: tuple[list[Tensor], Tensor], batch_idx: int) -> Tensor:
        (view1, view2), _ = batch
        z1, z2 = self.encode_views(self.encoder, [view1, view2])
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = 0.5 * (negative_cosine(p1, z2) + negative_cosine(p2, z1))
        # The paper's collapse indicator: the std of the normalised projections (0 when collapsed, ~1/sqrt(d)).
        spread = nn.functional.normalize(z1.detach(), dim=1).std(dim=0).mean()
        self.log_training(loss, embedding_std=spread)
        return loss
