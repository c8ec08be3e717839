"""ResNet backbones: torchvision's networks, the paper's `custom_` nets without conv5, and small-image stems.

Every backbone is a torchvision `ResNet` whose `fc` is an `nn.Identity`, so its forward returns pooled
features and its state-dict keys are exactly torchvision's (`conv1.weight`, `layer1.0.conv1.weight`, ...).
That keeps checkpoints interchangeable with torchvision and with the original code.
"""

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from s3l.errors import S3LError

# name -> (block, blocks per stage, keeps layer4). The custom_ nets are the paper's "small architecture":
# the original `moco/custom_resnet.py` is torchvision's ResNet with layer4 (conv5_x) commented out.
_SPECS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], list[int], bool]] = {
    "resnet10": (BasicBlock, [1, 1, 1, 1], True),
    "resnet18": (BasicBlock, [2, 2, 2, 2], True),
    "resnet50": (Bottleneck, [3, 4, 6, 3], True),
    "custom_resnet18": (BasicBlock, [2, 2, 2, 2], False),
    "custom_resnet50": (Bottleneck, [3, 4, 6, 3], False),
}

ARCHITECTURES: tuple[str, ...] = tuple(_SPECS)
STEMS: tuple[str, ...] = ("imagenet", "cifar")
# `architecture.stem: auto` picks the CIFAR stem when every stage of a run is at most this size: there the
# 7x7/2 conv and max-pool would leave conv5 a single pixel (32 px -> 8 px at conv2 -> 1 px at conv5).
CIFAR_STEM_MAX_RESOLUTION = 32


def stem_of(state: dict[str, torch.Tensor]) -> str:
    """The stem a backbone's state dict was built with: its conv1 kernel is 3x3 for the CIFAR stem."""
    return "cifar" if state["conv1.weight"].shape[-1] == 3 else "imagenet"


def stem_for_resolutions(resolutions: list[int]) -> str:
    """The stem `auto` gives a network trained from scratch at these input sizes."""
    return "cifar" if max(resolutions) <= CIFAR_STEM_MAX_RESOLUTION else "imagenet"


def build_backbone(name: str, stem: str = "imagenet") -> ResNet:
    """Build a ResNet backbone that maps (N, 3, H, W) images to (N, feature_dim) features.

    `name` is one of `ARCHITECTURES`; `custom_*` drops layer4, so its features are layer3's
    (256 * block expansion channels). `stem="cifar"` swaps the 7x7/2 conv and max-pool for a 3x3/1 conv,
    which keeps 32 px images from shrinking to 1 px before layer4. The attribute `feature_dim` gives
    the output width.
    """
    if name not in _SPECS:
        raise S3LError(f"unknown architecture '{name}'; choose one of: {', '.join(ARCHITECTURES)}")
    if stem not in STEMS:
        raise S3LError(f"unknown stem '{stem}'; choose one of: {', '.join(STEMS)}")
    block, layers, keeps_layer4 = _SPECS[name]
    backbone = ResNet(block, layers)
    if stem == "cifar":
        backbone.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        # Same init torchvision gives its own conv1.
        nn.init.kaiming_normal_(backbone.conv1.weight, mode="fan_out", nonlinearity="relu")
        backbone.maxpool = nn.Identity()
    last_stage_width = 512 if keeps_layer4 else 256
    if not keeps_layer4:
        backbone.layer4 = nn.Identity()
    backbone.fc = nn.Identity()
    backbone.feature_dim = last_stage_width * block.expansion
    backbone.architecture = name  # named in checkpoint-mismatch errors
    return backbone


def full_architecture(name: str) -> str:
    """The full network the conv5 warm-up grows `name` into (`custom_resnet50` -> `resnet50`)."""
    return name.removeprefix("custom_")


def backbone_flops(backbone: nn.Module, resolution: int) -> float:
    """Forward FLOPs for one resolution x resolution RGB image (2 per multiply-accumulate)."""
    was_training = backbone.training
    parameter = next(backbone.parameters())
    image = torch.zeros(1, 3, resolution, resolution, device=parameter.device, dtype=parameter.dtype)
    backbone.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        backbone(image)
    backbone.train(was_training)
    return float(counter.get_total_flops())
