"""The pretraining views as config: one `ViewSpec` per view, read from `configs/augmentation/<name>.yaml`.

A view is the same chain of random operations on every data path (`transforms.view_transform` on PIL
images, `cache.fast_view_transform`, `device_augment.RawViewsTransform`), always in this canonical order:

    crop -> colour jitter -> grayscale -> blur -> solarize -> flip

Each path draws the random numbers of one view with the same calls in the same order, so the same seeds give
the same views on every path. An operation whose probability is 0 is left out entirely and draws nothing:
MoCo v2 (no solarization) keeps exactly the draws and pixels it had before solarization existed.

The numbers live only in the YAML presets (`mocov2`, `byol`), each with the paper or script it comes from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated

from omegaconf import DictConfig, OmegaConf

from s3l.errors import S3LError
from s3l.schema import NonNegativeFloat, PositiveFloat, Range, UnitFloat, check

# RandomResizedCrop keeps a fraction in (0, 1] of the image area; ColorJitter's hue shift is at most half a turn.
CropScale = Annotated[float, Range(0, 1, low_inclusive=False)]
HueShift = Annotated[float, Range(0, 0.5)]


@dataclass(frozen=True)
class ViewSpec:
    """One view's random operations, in the canonical order (see the module docstring).

    - `min_scale`: RandomResizedCrop(size, scale=(min_scale, 1.0), ratio=(3/4, 4/3));
    - `jitter_p`, `jitter`: RandomApply(ColorJitter(brightness, contrast, saturation, hue), p=jitter_p);
    - `grayscale_p`: RandomGrayscale(p);
    - `blur_p`, `blur_sigma`: RandomApply(PIL GaussianBlur, p=blur_p), radius ~ U[low, high] drawn with
      Python's `random.uniform`, applied to the cropped image (not rescaled with the resolution);
    - `solarize_p`: RandomSolarize(threshold=128, p) (PIL ImageOps.solarize: values >= 128 become 255 - value);
    - `flip_p`: RandomHorizontalFlip(p).
    """

    min_scale: CropScale
    jitter_p: UnitFloat
    jitter: tuple[NonNegativeFloat, NonNegativeFloat, NonNegativeFloat, HueShift]
    grayscale_p: UnitFloat
    blur_p: UnitFloat
    blur_sigma: tuple[PositiveFloat, PositiveFloat]
    solarize_p: UnitFloat
    flip_p: UnitFloat


@dataclass(frozen=True)
class Augmentation:
    """The schema of the `augmentation` config group: a preset's name and its two views."""

    name: str
    view1: ViewSpec
    view2: ViewSpec


def view_specs(augmentation: DictConfig) -> tuple[ViewSpec, ViewSpec]:
    """(view1, view2) of the `augmentation` group, checked first: S3LError (one line naming the key) otherwise."""
    check(augmentation, Augmentation, "augmentation")
    views = []
    for name in ("view1", "view2"):
        values = OmegaConf.to_container(augmentation[name], resolve=True)
        low, high = values["blur_sigma"]
        if low > high:
            raise S3LError(f"augmentation.{name}.blur_sigma={[low, high]} must be [low, high] with low <= high")
        views.append(ViewSpec(**{field.name: _floats(values[field.name]) for field in dataclasses.fields(ViewSpec)}))
    return views[0], views[1]


def _floats(value: float | list) -> float | tuple[float, ...]:
    return tuple(float(item) for item in value) if isinstance(value, list) else float(value)


def smallest_min_scale(views: tuple[ViewSpec, ...]) -> float:
    """The smallest crop scale over the views: the one that sets the resized cache's short side."""
    return min(view.min_scale for view in views)
