"""The upstream S3L image pipelines (torchvision transforms v1 on PIL images, ImageNet statistics).

Pretraining makes two views of each image, each drawn from its own `ViewSpec` (`configs/augmentation/`,
MoCo v2's "aug-plus" by default); fine-tuning and evaluation use the Resize-then-crop recipes of the upstream
`main.py`, where the resize side is `size / 0.875` (224 -> 256, 112 -> 128).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from PIL import Image, ImageFilter
from torchvision import transforms

from s3l.data.views import ViewSpec

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


class MultiViewTransform:
    """One view per transform, in order, of the same image: `[view1, view2]` (query and key for MoCo)."""

    def __init__(self, view_transforms: Sequence[Callable]) -> None:
        self.transforms = list(view_transforms)

    def __call__(self, image: Image.Image) -> list:
        return [transform(image) for transform in self.transforms]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transforms!r})"


def view_ops(size: int, spec: ViewSpec, jitter: type[transforms.ColorJitter] = transforms.ColorJitter) -> list:
    """The random PIL operations of one view, in the canonical order (crop, jitter, grayscale, blur,
    solarize, flip); an operation with probability 0 is left out, so it draws no random number.

    `jitter` is the ColorJitter class (the fast path passes one with the same draws and pixels).
    """
    ops = [transforms.RandomResizedCrop(size, scale=(spec.min_scale, 1.0), ratio=(3 / 4, 4 / 3))]
    if spec.jitter_p > 0:
        ops.append(transforms.RandomApply([jitter(*spec.jitter)], p=spec.jitter_p))
    if spec.grayscale_p > 0:
        ops.append(transforms.RandomGrayscale(p=spec.grayscale_p))
    if spec.blur_p > 0:
        ops.append(transforms.RandomApply([PILGaussianBlur(spec.blur_sigma)], p=spec.blur_p))
    if spec.solarize_p > 0:
        ops.append(transforms.RandomSolarize(threshold=128, p=spec.solarize_p))  # PIL ImageOps.solarize
    if spec.flip_p > 0:
        ops.append(transforms.RandomHorizontalFlip(p=spec.flip_p))
    return ops


def view_transform(size: int, spec: ViewSpec) -> transforms.Compose:
    """One pretraining view at `size` x `size` (PIL operations of `spec`, then ToTensor and Normalize)."""
    return transforms.Compose([*view_ops(size, spec), *_to_normalized_tensor()])


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
