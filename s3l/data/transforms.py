"""The upstream S3L image pipelines (torchvision transforms v1 on PIL images, ImageNet statistics).

Pretraining uses the MoCo v2 augmentation on two independent views; fine-tuning and evaluation use the
Resize-then-crop recipes of the upstream `main.py`, where the resize side is `size / 0.875`
(224 -> 256, 112 -> 128).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from PIL import Image, ImageFilter
from torchvision import transforms

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The crop is this fraction of the resized image in the fine-tune and eval recipes.
CROP_FRACTION = 0.875


class PILGaussianBlur:
    """Blur with PIL's GaussianBlur at a radius drawn uniformly from `sigma`, as upstream MoCo v2 does.

    Upstream applies it to the already cropped image and does not rescale sigma with the resolution, so
    the blur is relatively stronger at 112 and 56 pixels than at 224; this keeps that behaviour.
    """

    def __init__(self, sigma: tuple[float, float]) -> None:
        self.sigma = tuple(sigma)

    def __call__(self, image: Image.Image) -> Image.Image:
        # Python's `random`, as upstream; Lightning's seed_everything seeds it in every worker.
        return image.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma={self.sigma})"


class TwoCropsTransform:
    """Two independent draws of `base` on the same image: `[query, key]`."""

    def __init__(self, base: Callable) -> None:
        self.base = base

    def __call__(self, image: Image.Image) -> list:
        return [self.base(image), self.base(image)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base!r})"


def moco_v2_augmentation(size: int, min_scale: float, blur_sigma: tuple[float, float]) -> transforms.Compose:
    """MoCo v2 ("aug-plus") view: random resized crop to `size`, colour jitter, grayscale, blur, flip."""
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(size, scale=(min_scale, 1.0)),
            transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            transforms.RandomGrayscale(p=0.2),
            transforms.RandomApply([PILGaussianBlur(blur_sigma)], p=0.5),
            transforms.RandomHorizontalFlip(),
            *_to_normalized_tensor(),
        ]
    )


def finetune_train_transform(size: int) -> transforms.Compose:
    """Upstream fine-tune training: resize the short side to size/0.875, flip, random crop `size`."""
    return transforms.Compose(
        [
            transforms.Resize(resize_side(size)),
            transforms.RandomHorizontalFlip(),
            transforms.RandomCrop(size),
            *_to_normalized_tensor(),
        ]
    )


def random_resized_crop_train_transform(size: int) -> transforms.Compose:
    """Upstream `--random-resized-crop` / linear-eval training: RandomResizedCrop(size) and flip."""
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(size),
            transforms.RandomHorizontalFlip(),
            *_to_normalized_tensor(),
        ]
    )


def eval_transform(size: int) -> transforms.Compose:
    """Upstream evaluation: resize the short side to size/0.875, then centre crop `size`."""
    return transforms.Compose(
        [
            transforms.Resize(resize_side(size)),
            transforms.CenterCrop(size),
            *_to_normalized_tensor(),
        ]
    )


def resize_side(size: int) -> int:
    """The short side an image is resized to before cropping `size` (256 for 224, 128 for 112)."""
    return int(round(size / CROP_FRACTION))


def _to_normalized_tensor() -> list:
    return [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
