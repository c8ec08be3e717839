"""Split BatchNorm: per-GPU BatchNorm statistics of a multi-GPU run, emulated on one device.

The original MoCo runs on 4 GPUs, so BatchNorm sees 32 images at a time. Training on one device with the
same global batch would normalise over all 128 at once, which changes the training dynamics; splitting
the batch into `num_splits` chunks restores the per-GPU statistics (as in the MoCo CIFAR demo).
"""

import torch
import torch.nn.functional as F
from torch import nn

from s3l.errors import S3LError


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that, in training, normalises each of `num_splits` consecutive batch chunks on its own.

    Chunk s holds samples [s*N/S, (s+1)*N/S), like the slice one of S GPUs would see. Each chunk updates
    its own copy of the running statistics, and the copies are averaged after the step. In eval mode (with
    running statistics) it is plain BatchNorm2d. Parameters, buffers and state-dict keys are those of
    `nn.BatchNorm2d`.
    """

    def __init__(
        self,
        num_features: int,
        num_splits: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        if num_splits < 1:
            raise S3LError(f"split BatchNorm needs num_splits >= 1, got {num_splits}")
        self.num_splits = num_splits

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training and self.track_running_stats:
            return super().forward(input)
        batch, channels, height, width = input.shape
        splits = self.num_splits
        if batch % splits != 0:
            raise S3LError(
                f"split BatchNorm cannot cut a batch of {batch} into {splits} equal chunks; "
                f"use a batch size divisible by {splits}"
            )
        # Lay chunk s out as channels [s*C, (s+1)*C) of a (N/S, S*C, H, W) batch, so one batch_norm call
        # normalises every chunk separately against its own repeated copy of the statistics.
        stacked = input.reshape(splits, batch // splits, channels, height, width).transpose(0, 1)
        stacked = stacked.reshape(batch // splits, splits * channels, height, width)
        running_mean = running_var = None
        factor = self.momentum or 0.0  # unused when there are no running statistics to update
        if self.track_running_stats:
            running_mean = self.running_mean.repeat(splits)
            running_var = self.running_var.repeat(splits)
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as in nn.BatchNorm2d
                factor = 1.0 / float(self.num_batches_tracked)
        weight = self.weight.repeat(splits) if self.affine else None
        bias = self.bias.repeat(splits) if self.affine else None
        output = F.batch_norm(stacked, running_mean, running_var, weight, bias, True, factor, self.eps)
        if self.track_running_stats:
            with torch.no_grad():
                self.running_mean.copy_(running_mean.view(splits, channels).mean(dim=0))
                self.running_var.copy_(running_var.view(splits, channels).mean(dim=0))
        output = output.reshape(batch // splits, splits, channels, height, width).transpose(0, 1)
        return output.reshape(batch, channels, height, width)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_splits={self.num_splits}"


def convert_to_split_batchnorm(module: nn.Module, num_splits: int) -> nn.Module:
    """Replace every `nn.BatchNorm2d` in `module` by a `SplitBatchNorm2d`, keeping weights and statistics.

    Returns the converted module (a new object only when `module` itself is a BatchNorm2d);
    `num_splits == 1` returns `module` unchanged.
    """
    if num_splits == 1:
        return module
    if isinstance(module, nn.BatchNorm2d):
        return _split_copy(module, num_splits)
    for name, child in module.named_children():
        setattr(module, name, convert_to_split_batchnorm(child, num_splits))
    return module


def _split_copy(bn: nn.BatchNorm2d, num_splits: int) -> SplitBatchNorm2d:
    split = SplitBatchNorm2d(
        bn.num_features, num_splits, bn.eps, bn.momentum, bn.affine, bn.track_running_stats
    )
    floating = [tensor for tensor in (*bn.parameters(), *bn.buffers()) if tensor.is_floating_point()]
    if floating:
        split.to(device=floating[0].device, dtype=floating[0].dtype)
    split.load_state_dict(bn.state_dict())
    for new, old in zip(split.parameters(), bn.parameters(), strict=True):
        new.requires_grad_(old.requires_grad)
    split.train(bn.training)
    return split
