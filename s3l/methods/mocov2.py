"""MoCo v2 pretraining (He et al. 2020; Chen et al. 2020) as the S3L code runs it.

The algorithm follows facebookresearch/moco `builder.py`, which the S3L upstream uses unchanged:
a query encoder trained by SGD, a key encoder that is its exponential moving average, a queue of the
last K keys as negatives, and the InfoNCE loss over (1 positive + K negatives) / T. BatchNorm never sees
more than one "device batch": under DDP keys are shuffled across processes (shuffle-BN), on one device
split BatchNorm emulates the per-GPU statistics of the upstream's 4 x 32 images.
"""

from __future__ import annotations

import copy

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from s3l.distributed import batch_shuffle, batch_unshuffle, concat_all_gather
from s3l.models.batchnorm import convert_to_split_batchnorm
from s3l.models.heads import build_projection_head
from s3l.models.resnet import build_backbone
from s3l.optim import build_lr_schedule, build_sgd


class Encoder(nn.Module):
    """A backbone followed by the projection head (upstream: a ResNet whose fc is the MLP head)."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


def infonce_logits(q: Tensor, k: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """Logits of the (K+1)-way instance discrimination: column 0 is the positive key, then the queue.

    Computed in float32 whatever the autocast precision, so reduced precision cannot blur the
    similarities that the temperature sharpens.
    """
    with torch.autocast(device_type=q.device.type, enabled=False):  # autocast would recast the matmul
        q, k = q.float(), k.float()
        l_pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)
        l_neg = q @ queue.float()
        return torch.cat([l_pos, l_neg], dim=1) / temperature


class MoCoV2(L.LightningModule):
    """MoCo v2 pretraining module: query/key encoders, momentum update, queue, InfoNCE loss."""

    def __init__(
        self,
        architecture: str,
        stem: str,
        dim: int,
        K: int,
        m: float,
        T: float,
        mlp: bool,
        bn_splits: int,
        lr: float,
        momentum: float,
        weight_decay: float,
        lr_schedule: str,
        milestones: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        backbone = build_backbone(architecture, stem)
        encoder = Encoder(backbone, build_projection_head(backbone.feature_dim, dim, mlp))
        # bn_splits here is per device (the run divides the global count by the number of devices).
        self.encoder_q = convert_to_split_batchnorm(encoder, bn_splits)
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for param in self.encoder_k.parameters():
            param.requires_grad = False
        # The queue stays float32 under mixed precision (it is a buffer, never autocast).
        self.register_buffer("queue", F.normalize(torch.randn(dim, K), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @property
    def backbone(self) -> nn.Module:
        """The query backbone: what the next stage receives."""
        return self.encoder_q.backbone

    @torch.no_grad()
    def momentum_update_key_encoder(self) -> None:
        """theta_k <- m * theta_k + (1 - m) * theta_q, parameters only (BN buffers follow their own forward)."""
        params_k = [p.data for p in self.encoder_k.parameters()]
        params_q = [p.data for p in self.encoder_q.parameters()]
        torch._foreach_mul_(params_k, self.hparams.m)
        torch._foreach_add_(params_k, params_q, alpha=1.0 - self.hparams.m)

    @torch.no_grad()
    def dequeue_and_enqueue(self, keys: Tensor) -> None:
        """Write the keys of ALL processes (rank order) over the oldest queue entries; advance the pointer."""
        keys = concat_all_gather(keys)
        batch = keys.shape[0]
        K = self.queue.shape[1]
        if K % batch:
            raise RuntimeError(f"queue length K={K} is not a multiple of the global batch {batch}")
        ptr = int(self.queue_ptr)
        self.queue[:, ptr : ptr + batch] = keys.T.to(self.queue.dtype)
        self.queue_ptr[0] = (ptr + batch) % K

    @torch.no_grad()
    def compute_keys(self, im_k: Tensor) -> Tensor:
        """Keys from the key encoder, with the batch shuffled so BN statistics cannot pair q and k."""
        shuffled, idx_unshuffle = batch_shuffle(im_k)
        k = F.normalize(self.encoder_k(shuffled), dim=1)
        return batch_unshuffle(k, idx_unshuffle)

    def training_step(self, batch: tuple[list[Tensor], Tensor], batch_idx: int) -> Tensor:
        (im_q, im_k), _ = batch
        q = F.normalize(self.encoder_q(im_q), dim=1)
        self.momentum_update_key_encoder()  # before the keys, as upstream
        k = self.compute_keys(im_k)
        logits = infonce_logits(q, k, self.queue.clone().detach(), self.hparams.T)
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        loss = F.cross_entropy(logits, labels)
        self.dequeue_and_enqueue(k)
        acc1 = (logits.argmax(dim=1) == 0).float().mean()
        self.log("train/loss", loss, prog_bar=True, sync_dist=True)
        self.log("train/instance_acc1", acc1, sync_dist=True)
        return loss

    def configure_optimizers(self):
        optimizer = build_sgd(
            self.encoder_q.parameters(), self.hparams.lr, self.hparams.momentum, self.hparams.weight_decay
        )
        steps = max(1, self.trainer.estimated_stepping_batches // max(1, self.trainer.max_epochs))
        schedule = build_lr_schedule(
            optimizer, self.hparams.lr_schedule, self.trainer.max_epochs, steps, self.hparams.milestones
        )
        return {"optimizer": optimizer, "lr_scheduler": schedule}
