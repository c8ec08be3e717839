"""Features of every ResNet stage from one pass over a loader, for probes that train on cached features."""

from __future__ import annotations

import logging
import time

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchvision.models.resnet import ResNet

from s3l.errors import S3LError

log = logging.getLogger("s3l")

# Paper naming (conv2_x .. conv5_x) of torchvision's layer1 .. layer4.
RESNET_STAGES = ("conv2", "conv3", "conv4", "conv5")
_LAYERS = dict(zip(RESNET_STAGES, ("layer1", "layer2", "layer3", "layer4")))


def stage_names(backbone: ResNet) -> list[str]:
    """The stages `backbone` has, in order: a `custom_*` net (layer4 = nn.Identity) has no conv5."""
    return [stage for stage in RESNET_STAGES if not isinstance(getattr(backbone, _LAYERS[stage]), nn.Identity)]


def _stage_features(backbone: ResNet, images: Tensor, stages: list[str]) -> dict[str, Tensor]:
    # The torchvision forward, stopped after the last stage asked for.
    x = backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(images))))
    pooled = {}
    for stage in RESNET_STAGES[: max(RESNET_STAGES.index(stage) for stage in stages) + 1]:
        x = getattr(backbone, _LAYERS[stage])(x)
        if stage in stages:
            pooled[stage] = x.mean(dim=(2, 3))
    return pooled


def extract(
    backbone: ResNet, loader: DataLoader, device: torch.device | str, stages: list[str] | None = None
) -> tuple[dict[str, Tensor], Tensor]:
    """Features of every (images, labels) batch of `loader`, on CPU in float32, and the labels.

    With `stages` (names from `stage_names`), the pooled output of each of those stages; with None, only
    `{"final": backbone(images)}` (for a `custom_*` net that is its conv4). The backbone must already be on
    `device`; it runs in eval mode without gradients, and every submodule gets its previous mode back.
    Labels are returned as the loader gives them: single-label as int64 (N,), multi-label as (N, C).
    """
    if stages is not None:
        available = stage_names(backbone)
        if not stages or any(stage not in available for stage in stages):
            raise S3LError(f"cannot extract stages {list(stages)}: choose one or more of {', '.join(available)}")
    modes = {module: module.training for module in backbone.modules()}
    backbone.eval()
    features: dict[str, list[Tensor]] = {}
    labels = []
    start = time.perf_counter()
    try:
        with torch.no_grad():
            for images, targets in loader:
                images = images.to(device, non_blocking=True)
                batch = (
                    {"final": backbone(images).flatten(1)}
                    if stages is None
                    else _stage_features(backbone, images, stages)
                )
                for name, value in batch.items():
                    features.setdefault(name, []).append(value.float().cpu())
                labels.append(torch.as_tensor(targets))
    finally:
        for module, training in modes.items():
            module.training = training
    stacked = {name: torch.cat(values) for name, values in features.items()}
    label_tensor = torch.cat(labels)
    if label_tensor.ndim == 1:
        label_tensor = label_tensor.long()
    seconds = time.perf_counter() - start
    log.info("extracted %s features of %d images in %.1f s (%.0f images/s)",
             "/".join(stacked), len(label_tensor), seconds, len(label_tensor) / max(seconds, 1e-9))
    return stacked, label_tensor
