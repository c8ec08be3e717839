"""The SSL losses, as pure functions of embeddings (tests/methods/test_losses.py checks each by hand).

- `infonce_logits`: MoCo's (K+1)-way instance discrimination against a queue of keys;
- `nt_xent`: SimCLR's normalised-temperature cross entropy over both views of the batch (global or local);
- `negative_cosine`: SimSiam's D(p, z) with the stop-gradient on z;
- `byol_loss`: BYOL's 2 - 2 cos(p, z), i.e. the squared distance of the normalised vectors.

Similarities are computed in float32 whatever the autocast precision: reduced precision would blur the
small differences that a temperature of 0.1 or 0.2 sharpens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from s3l.distributed import gather_with_grad, world


def infonce_logits(q: Tensor, k: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """Logits of the (K+1)-way instance discrimination: column 0 is the positive key, then the queue.

    `q` and `k` are (N, C) normalised queries and keys, `queue` is (C, K); the label of every row is 0.
    """
    with torch.autocast(device_type=q.device.type, enabled=False):  # autocast would recast the matmul
        q, k = q.float(), k.float()
        l_pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)
        l_neg = q @ queue.float()
        return torch.cat([l_pos, l_neg], dim=1) / temperature


def nt_xent(z1: Tensor, z2: Tensor, temperature: float, negatives: str = "global",
            loss_scale: float = 1.0) -> Tensor:
    """SimCLR's NT-Xent: every view of every image is an anchor; its other view is the positive and the
    2N - 2 views of the other images are the negatives.

    `z1`, `z2`: (n, C) embeddings of the two views of this process's n images (normalised here).
    `negatives="global"`: the candidates are the views of the whole global batch, gathered from every process
    with their gradients flowing back to the process that computed them; the loss is the mean over this
    process's anchors, so the mean over processes (what DDP's gradient averaging optimises) is the loss of the
    whole batch. `"local"`: only this process's 2n views, as the S3L upstream computed it per GPU.
    `loss_scale`: upstream's SupConLoss multiplies the loss by T / base_temperature (0.07).
    """
    with torch.autocast(device_type=z1.device.type, enabled=False):
        z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
        rank, world_size = world() if negatives == "global" else (0, 1)
        all1 = gather_with_grad(z1) if world_size > 1 else z1
        all2 = gather_with_grad(z2) if world_size > 1 else z2
        n, total = z1.shape[0], all1.shape[0]
        anchors = torch.cat([z1, z2])                      # 2n: this process's views
        candidates = torch.cat([all1, all2])               # 2N: every view of the global batch
        logits = anchors @ candidates.T / temperature
        own = rank * n + torch.arange(n, device=z1.device)  # this process's images, as global indices
        self_index = torch.cat([own, own + total])
        positive = torch.cat([own + total, own])          # view 1 pairs with view 2 and back
        is_self = F.one_hot(self_index, 2 * total).bool()  # an anchor is never its own negative
        return loss_scale * F.cross_entropy(logits.masked_fill(is_self, float("-inf")), positive)


def negative_cosine(p: Tensor, z: Tensor) -> Tensor:
    """SimSiam's D(p, z) = -cos(p, stopgrad(z)), averaged over the batch (in [-1, 1])."""
    with torch.autocast(device_type=p.device.type, enabled=False):
        return -F.cosine_similarity(p.float(), z.detach().float(), dim=1).mean()


def byol_loss(p: Tensor, z: Tensor) -> Tensor:
    """BYOL's regression loss 2 - 2 cos(p, z) = || p/|p| - z/|z| ||^2, averaged over the batch; z is the
    target network's projection (no gradient)."""
    with torch.autocast(device_type=p.device.type, enabled=False):
        return (2 - 2 * F.cosine_similarity(p.float(), z.detach().float(), dim=1)).mean()
