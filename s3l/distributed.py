"""Shuffle-BN helpers from the official MoCo (`moco/builder.py`), valid on one process and under DDP.

MoCo shuffles the key encoder's batch across processes before the forward pass and restores the order
after it, so a query and its key are normalised with BatchNorm statistics of different sub-batches and
cannot cheat through them. On a single process the shuffle is a plain permutation; combine it with
`SplitBatchNorm2d` to get the same effect.
"""

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) when torch.distributed is not in use."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def concat_all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from every process along dim 0, in rank order (no gradient flows back)."""
    _, world_size = world()
    if world_size == 1:
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered, dim=0)


class _GatherWithGrad(torch.autograd.Function):
    # Our own, not torch's functional `all_gather_single_autograd`: under gloo (torch 2.14) a process that ran
    # its backward aborted at exit ("terminate called without an active exception") in about one run in four.
    # Blocking all_gather / all_reduce leave no asynchronous work behind.
    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        return concat_all_gather(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        rank, world_size = world()
        grad = grad.contiguous()
        dist.all_reduce(grad)  # every process's gradient for every slice, summed
        return grad.chunk(world_size)[rank]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """`concat_all_gather` through which gradients flow back to the process that computed each slice.

    The backward sums every process's gradient for a slice onto the slice's owner; with DDP averaging the
    parameter gradients over processes, a loss that each process computes on the gathered batch is optimised
    exactly as the same loss on one device (tests/test_distributed.py). Every process must pass a tensor of
    the same shape.
    """
    _, world_size = world()
    if world_size == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


@torch.no_grad()
def batch_shuffle(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle the global batch and return (this process's slice of it, the index that undoes the shuffle).

    Every process must pass a batch of the same size. Rank 0 draws the permutation and broadcasts it,
    so all processes agree on it.
    """
    rank, world_size = world()
    x_all = concat_all_gather(x)
    idx_shuffle = torch.randperm(x_all.shape[0], device=x.device)
    if world_size > 1:
        dist.broadcast(idx_shuffle, src=0)
    idx_unshuffle = torch.argsort(idx_shuffle)
    idx_this = idx_shuffle.view(world_size, -1)[rank]
    return x_all[idx_this], idx_unshuffle


@torch.no_grad()
def batch_unshuffle(x: torch.Tensor, idx_unshuffle: torch.Tensor) -> torch.Tensor:
    """Undo `batch_shuffle`: return this process's original slice, in its original order."""
    rank, world_size = world()
    x_all = concat_all_gather(x)
    idx_this = idx_unshuffle.view(world_size, -1)[rank]
    return x_all[idx_this]
