"""Projection heads that sit between the backbone features and the contrastive loss."""

from torch import nn


class ProjectionHead(nn.Sequential):
    """The MoCo v2 MLP head: Linear(in, hidden) -> ReLU -> Linear(hidden, out), both Linears with bias.

    There is no BatchNorm, as in the original code, which swaps the encoder's fc for
    `Sequential(Linear(d, d), ReLU(), Linear(d, 128))`; the state-dict keys are therefore `0.*` and `2.*`.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, out_dim))


def build_projection_head(in_dim: int, out_dim: int, mlp: bool) -> nn.Module:
    """The MoCo v2 MLP head (hidden width = `in_dim`, as upstream) if `mlp`, else MoCo v1's single Linear."""
    if mlp:
        return ProjectionHead(in_dim, in_dim, out_dim)
    return nn.Linear(in_dim, out_dim)
