"""MoCo v2 pretraining (He et al. 2020; Chen et al. 2020) as the S3L code runs it.

The algorithm follows facebookresearch/moco `builder.py`, which the S3L upstream uses unchanged:
a query encoder trained by SGD, a key encoder that is its exponential moving average, a queue of the
last K keys as negatives, and the InfoNCE loss over (1 positive + K negatives) / T. BatchNorm never sees
more than one "device batch": under DDP keys are shuffled across processes (shuffle-BN), on one device
split BatchNorm emulates the per-GPU statistics of the upstream's 4 x 32 images.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from s3l.config import StageSpec
from s3l.distributed import batch_shuffle, batch_unshuffle, concat_all_gather
from s3l.errors import S3LError
from s3l.methods.base import SSLMethod
from s3l.methods.losses import infonce_logits
from s3l.methods.momentum import ema_update_
from s3l.models.heads import mlp_head
from s3l.schema import PositiveFloat, PositiveInt, UnitFloat

__all__ = ["MoCoV2", "infonce_logits"]


class MoCoV2(SSLMethod):
    """MoCo v2 pretraining module: query/key encoders, momentum update, queue, InfoNCE loss."""

    forward_cost = 4.0  # query view: forward + backward (3), key view: forward (1)

    def __init__(self, *, dim: PositiveInt, K: PositiveInt, m: UnitFloat, T: PositiveFloat, mlp: bool,
                 **settings) -> None:
        """`dim`: embedding size; `K`: queue length; `m`: key-encoder momentum; `T`: temperature; `mlp`: the
        MoCo v2 head d -> d -> dim (else MoCo v1's linear head). `settings`: see SSLMethod."""
        super().__init__(**settings)
        self.encoder_q = self.make_encoder(lambda d: mlp_head(d, None, dim, layers=2 if mlp else 1,
                                                              batch_norm=False))
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

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.encoder_q, self.encoder_k)]

    @torch.no_grad()
    def momentum_update_key_encoder(self) -> None:
        """theta_k <- m * theta_k + (1 - m) * theta_q, parameters only (BN buffers follow their own forward)."""
        ema_update_(self.encoder_k, self.encoder_q, self.hparams.m)

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
        self.log_training(loss, instance_acc1=acc1)
        return loss

    @classmethod
    def check_config(cls, method: DictConfig, spec: StageSpec) -> None:
        super().check_config(method, spec)
        K, batch = method.K, spec.cfg.batch_size
        if K % batch:
            raise S3LError(
                f"method.K={K} is not a multiple of the global batch {spec.key}.batch_size={batch} "
                f"(the queue is overwritten one whole batch at a time); use e.g. method.K={max(batch, K // batch * batch)}"
            )

    @classmethod
    def check_run(cls, method: DictConfig, spec: StageSpec, dataset: str, train_images: int,
                  world_size: int) -> None:
        """K must be smaller than the training images minus the global batch, or the queue holds stale copies
        of the very images being contrasted."""
        super().check_run(method, spec, dataset, train_images, world_size)
        K, batch = method.K, spec.cfg.batch_size
        room = train_images - batch
        if K < room:
            return
        suggestion = (room - 1) // batch * batch
        fix = (f"method.K={suggestion}" if suggestion >= batch
               else f"{spec.key}.batch_size={max(1, batch // 4)} method.K={max(1, batch // 4)}")
        raise S3LError(
            f"method.K={K} is too large for dataset {dataset}: {train_images} training images minus the global "
            f"batch {batch} leave room for {room} queued keys, and K must be smaller; set e.g. {fix}"
        )
