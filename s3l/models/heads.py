"""Projection and prediction heads between the backbone features and an SSL loss.

One builder, `mlp_head`, covers every method's heads through its depth, widths and BatchNorm:

| method  | head        | layers | hidden           | BatchNorm                 | out  |
|---------|-------------|--------|------------------|---------------------------|------|
| MoCo v2 | projector   | 2      | = feature dim    | none                      | 128  |
| SimCLR  | projector   | 2      | = feature dim    | none                      | 128  |
| BYOL    | projector   | 2      | 4096             | hidden                    | 128  |
| BYOL    | predictor   | 2      | 4096             | hidden                    | 128  |
| SimSiam | projector   | 3      | 2048             | hidden and output         | 2048 |
| SimSiam | predictor   | 2      | 512 (bottleneck) | hidden                    | 2048 |
"""

from __future__ import annotations

from torch import nn


def mlp_head(in_dim: int, hidden_dim: int | None, out_dim: int, layers: int, batch_norm: bool,
        last_batch_norm: bool = False) -> nn.Module:
    """`layers` Linear layers in_dim -> hidden_dim ... -> out_dim (hidden_dim None: = in_dim), ReLU between.

    `batch_norm`: BatchNorm1d after every hidden Linear (whose bias it makes redundant, so it has none);
    `last_batch_norm`: also after the output Linear, without affine parameters (SimSiam's projector).
    One layer is a plain Linear (MoCo v1). Two layers without BatchNorm are MoCo v2's `--mlp` head, the
    upstream's `Sequential(Linear(d, d), ReLU(), Linear(d, 128))`, with its state-dict keys `0.*` and `2.*`.
    """
    if layers < 1:
        raise ValueError(f"a head needs at least one layer, got {layers}")
    if layers == 1:
        return nn.Linear(in_dim, out_dim)
    hidden = in_dim if hidden_dim is None else hidden_dim
    widths = [in_dim] + [hidden] * (layers - 1)
    modules: list[nn.Module] = []
    for width_in, width_out in zip(widths, widths[1:]):
        modules.append(nn.Linear(width_in, width_out, bias=not batch_norm))
        if batch_norm:
            modules.append(nn.BatchNorm1d(width_out))
        modules.append(nn.ReLU(inplace=True))
    modules.append(nn.Linear(hidden, out_dim, bias=not last_batch_norm))
    if last_batch_norm:
        modules.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*modules)
