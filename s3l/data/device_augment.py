"""On-device pretraining augmentation: DataLoader workers only read images and draw random parameters; the
views are cropped, resized, jittered, blurred, solarized and flipped in whole batches on the training device.

Why: at 56 and 112 px, once the resized-image cache removes the JPEG decode, what is left per image is the
per-view PIL augmentation (about 5 ms per image at 112 px on one CPU core, docs/benchmarks.md). A GPU
does the same work for a batch of 256 views in a few milliseconds, so the CPU workers no longer decide how
fast the GPU is fed.

How (selected with `dataset.augment_on=device`):
- a worker turns an image into a uint8 (3, H, W) tensor and draws each view's parameters from its own
  `ViewSpec` with `draw_view_params`: the same random calls, in the same order, as the PIL pipeline of
  `s3l.data.transforms.view_transform` (so the same seeds give the same crops, jitter, grayscale, blur,
  solarize and flip decisions; an operation with probability 0 draws nothing on either path), stored as one
  row of `PARAMS` floats per view;
- `collate_raw_views` pads a batch of images to a common size by repeating their last row and column (so
  sampling at an image border sees that image, never the padding) into a `RawViews` batch;
- after the batch reaches the device, `StageDataModule.on_after_batch_transfer` calls `realize_views`,
  which makes the normalised ((view1, view2), labels) batch that the pretraining methods expect.

The maths follows torchvision's tensor functional ops (on floats in [0, 1], per-sample factors). Where it
differs from the PIL pipeline, and why that is harmless:
- crop-resize is `torchvision.ops.roi_align` with adaptive sampling: each output pixel averages a
  ceil(scale) x ceil(scale) grid of bilinear samples of its source area (an area filter when shrinking,
  bilinear when enlarging), where PIL uses an antialiased triangle filter; when enlarging, the outermost
  output pixels blend in the image pixels just outside the box, where crop-then-resize repeats the edge;
- the blur is a true Gaussian with sigma = the drawn radius (kernel 2 * ceil(3 sigma_max) + 1, reflected
  borders, as torchvision's `gaussian_blur`), where PIL approximates it with three box blurs;
- values stay float between the steps instead of being rounded to uint8 after each one (solarize therefore
  compares with 127.5, where PIL compares the rounded value with 128).
tests/data/test_device_augment.py checks each op against torchvision's per-image ops, and
tests/data/test_views.py the whole pipeline against the PIL one under the same seeds, for every preset.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision import transforms
from torchvision.ops import roi_align
from torchvision.transforms.functional import pil_to_tensor

from s3l.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from s3l.data.views import ViewSpec

# One row of view parameters, in the canonical order: crop box, colour jitter (applied?, op order,
# 4 factors), grayscale?, blur? and its sigma, solarize?, flip?
(TOP, LEFT, HEIGHT, WIDTH, JITTER, ORDER, BRIGHTNESS, CONTRAST, SATURATION, HUE, GRAY, BLUR, SIGMA, SOLARIZE,
 FLIP) = (0, 1, 2, 3, 4, slice(5, 9), 9, 10, 11, 12, 13, 14, 15, 16, 17)
PARAMS = 18
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale (ITU-R 601-2)


class RawViews(NamedTuple):
    """A pretraining batch before augmentation: padded uint8 images (N, 3, H, W), view parameters
    (N, 2, PARAMS) in pixels of each image's own top-left corner, labels (N,), output side in pixels."""

    images: Tensor
    params: Tensor
    labels: Tensor
    size: int


class RawViewsTransform:
    """The worker's part: the image as a uint8 tensor and one row of parameters per view, each drawn from
    its own `ViewSpec` (view1 first, as `MultiViewTransform`)."""

    def __init__(self, specs: tuple[ViewSpec, ViewSpec]) -> None:
        self.specs = tuple(specs)
        self._jitters = [transforms.ColorJitter(*spec.jitter) for spec in self.specs]  # the factor ranges

    def __call__(self, image: Image.Image) -> tuple[Tensor, Tensor]:
        pixels = pil_to_tensor(image)  # every dataset already serves RGB (load_rgb, CachedImages, digits)
        return pixels, torch.stack([self.draw_view_params(pixels, view) for view in range(len(self.specs))])

    def draw_view_params(self, pixels: Tensor, view: int) -> Tensor:
        """One view's parameters, drawn with the same calls in the same order as the PIL pipeline
        (`s3l.data.transforms.view_ops`); an operation with probability 0 draws nothing."""
        spec, row = self.specs[view], [0.0] * PARAMS
        row[TOP], row[LEFT], row[HEIGHT], row[WIDTH] = transforms.RandomResizedCrop.get_params(
            pixels, [spec.min_scale, 1.0], [3 / 4, 4 / 3]
        )
        if spec.jitter_p > 0 and not spec.jitter_p < torch.rand(1):  # RandomApply's test
            j = self._jitters[view]
            order, *factors = j.get_params(j.brightness, j.contrast, j.saturation, j.hue)
            row[JITTER] = 1.0
            row[ORDER] = order.tolist()
            # A zero strength is no factor (None): ColorJitter skips that op, a neutral factor does nothing.
            row[BRIGHTNESS], row[CONTRAST], row[SATURATION], row[HUE] = (
                neutral if factor is None else factor for factor, neutral in zip(factors, (1.0, 1.0, 1.0, 0.0))
            )
        if spec.grayscale_p > 0:
            row[GRAY] = float(torch.rand(1) < spec.grayscale_p)  # RandomGrayscale's test
        if spec.blur_p > 0 and not spec.blur_p < torch.rand(1):
            row[BLUR] = 1.0
            row[SIGMA] = random.uniform(*spec.blur_sigma)  # Python's random, as PILGaussianBlur
        if spec.solarize_p > 0:
            row[SOLARIZE] = float(torch.rand(1).item() < spec.solarize_p)  # RandomSolarize's test
        if spec.flip_p > 0:
            row[FLIP] = float(torch.rand(1) < spec.flip_p)  # RandomHorizontalFlip's test
        return torch.tensor(row, dtype=torch.float32)


def collate_raw_views(samples: list, size: int) -> RawViews:
    """Batch `((pixels, params), label)` samples from `RawViewsTransform` into a `RawViews`."""
    images = pad_images([pixels for (pixels, _), _ in samples])
    params = torch.stack([params for (_, params), _ in samples])
    labels = torch.tensor([label for _, label in samples])
    return RawViews(images, params, labels, size)


def pad_images(images: list[Tensor]) -> Tensor:
    """uint8 (3, h, w) images padded to one (N, 3, H, W) batch on their device by repeating each image's last
    row and column, so that sampling at an image border sees that image, never the padding."""
    height = max(pixels.shape[1] for pixels in images)
    width = max(pixels.shape[2] for pixels in images)
    batch = torch.empty(len(images), 3, height, width, dtype=torch.uint8, device=images[0].device)
    for canvas, pixels in zip(batch, images):
        h, w = pixels.shape[1:]
        canvas[:, :h, :w] = pixels
        canvas[:, :h, w:] = pixels[:, :, w - 1 :]  # repeat the last column, then the last row
        canvas[:, h:, :] = canvas[:, h - 1 : h, :]
    return batch


class RawViewsCollate:
    """`collate_raw_views` at a fixed output size (a picklable collate_fn for DataLoader workers)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, samples: list) -> RawViews:
        return collate_raw_views(samples, self.size)


def realize_views(batch):
    """A `RawViews` batch as ((query, key), labels) normalised float32 views; any other batch unchanged."""
    if not isinstance(batch, RawViews):
        return batch
    n = batch.images.shape[0]
    views = augment_views(batch.images, batch.params.reshape(2 * n, PARAMS), batch.size, views_per_image=2)
    views = normalize(views)
    # Row 2i + v of the flattened parameters is view v of image i.
    return [views[0::2].contiguous(), views[1::2].contiguous()], batch.labels


def augment_views(images: Tensor, params: Tensor, size: int, views_per_image: int = 1) -> Tensor:
    """float views in [0, 1], (M, 3, size, size), from uint8 images (N, 3, H, W) and M = N x views_per_image
    rows of view parameters (view v of image i at row i x views_per_image + v)."""
    *_, (_, views) = augment_steps(images, params, size, views_per_image)
    return views


def augment_steps(images: Tensor, params: Tensor, size: int, views_per_image: int = 1) -> Iterator[tuple]:
    """`augment_views` one step at a time, as (step name, views so far); `s3l.bench` times the steps.

    The crops are a new tensor, so the later steps work on it in place.
    """
    views = resized_crops(images.float().div_(255), params, size, views_per_image)
    yield "crop + resize", views
    yield "colour jitter", color_jitter(views, params)
    views = grayscale(views, params[:, GRAY] > 0)
    views = gaussian_blur(views, params[:, BLUR] > 0, params[:, SIGMA])
    views = solarize(views, params[:, SOLARIZE] > 0)
    yield "grayscale + blur + solarize + flip", flip(views, params[:, FLIP] > 0)


def resized_crops(images: Tensor, params: Tensor, size: int, views_per_image: int = 1) -> Tensor:
    """Crop each row's box (top, left, height, width) and resize it to size x size (area-averaged)."""
    index = torch.arange(images.shape[0], device=images.device, dtype=params.dtype)
    index = index.repeat_interleave(views_per_image)
    top, left, height, width = params[:, TOP], params[:, LEFT], params[:, HEIGHT], params[:, WIDTH]
    boxes = torch.stack([index, left, top, left + width, top + height], dim=1)
    # aligned=True: pixel k covers [k, k + 1), so the box spans exactly the cropped pixels.
    return roi_align(images, boxes.to(images.dtype), output_size=size, sampling_ratio=-1, aligned=True)


def _selected(views: Tensor, mask: Tensor, op, *factors: Tensor) -> Tensor:
    """op(views[mask], factors[mask]) written into the masked rows of `views` (in place; returns it)."""
    rows = mask.nonzero().squeeze(1)
    if rows.numel():
        views[rows] = op(views[rows], *(f[rows].view(-1, 1, 1, 1) for f in factors))
    return views


def _gray(views: Tensor) -> Tensor:
    weights = torch.tensor(GRAY_WEIGHTS, device=views.device, dtype=views.dtype).view(1, 3, 1, 1)
    return (views * weights).sum(dim=1, keepdim=True)


def _blend(views: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    return (factor * views + (1 - factor) * other).clamp_(0, 1)


def adjust_brightness(views: Tensor, factor: Tensor) -> Tensor:
    return _blend(views, torch.zeros_like(views), factor)


def adjust_contrast(views: Tensor, factor: Tensor) -> Tensor:
    return _blend(views, _gray(views).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(views: Tensor, factor: Tensor) -> Tensor:
    return _blend(views, _gray(views), factor)


def adjust_hue(views: Tensor, factor: Tensor) -> Tensor:
    """Rotate the HSV hue by `factor` of a turn (torchvision's tensor adjust_hue, per sample)."""
    hue, saturation, value = rgb_to_hsv(views).unbind(dim=1)
    hue = (hue + factor[:, 0]) % 1.0
    return hsv_to_rgb(torch.stack([hue, saturation, value], dim=1))


JITTER_OPS = ((adjust_brightness, BRIGHTNESS), (adjust_contrast, CONTRAST), (adjust_saturation, SATURATION),
              (adjust_hue, HUE))


def color_jitter(views: Tensor, params: Tensor) -> Tensor:
    """ColorJitter on the rows whose JITTER flag is set, each in its own drawn order of the four ops.

    Like `grayscale`, `gaussian_blur`, `solarize` and `flip`, it writes into `views` and returns it.
    """
    applied = params[:, JITTER] > 0
    order = params[:, ORDER].long()
    for position in range(4):
        for op_index, (op, column) in enumerate(JITTER_OPS):
            views = _selected(views, applied & (order[:, position] == op_index), op, params[:, column])
    return views


def grayscale(views: Tensor, mask: Tensor) -> Tensor:
    return _selected(views, mask, lambda v: _gray(v).expand(-1, 3, -1, -1))


def gaussian_blur(views: Tensor, mask: Tensor, sigma: Tensor) -> Tensor:
    """A Gaussian blur of the masked rows, each with its own sigma (separable, reflected borders)."""
    rows = mask.nonzero().squeeze(1)
    if not rows.numel():
        return views
    sigma = sigma[rows]
    radius = max(1, math.ceil(3 * float(sigma.max())))
    radius = min(radius, views.shape[-1] - 1)  # reflection needs radius < side
    offsets = torch.arange(-radius, radius + 1, device=views.device, dtype=views.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma.view(-1, 1).to(views.dtype)) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(3, dim=0)  # (3M, 2r + 1)
    selected = views[rows]
    m, c, h, w = selected.shape
    x = F.pad(selected.reshape(1, m * c, h, w), (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(m * c, 1, 1, -1), groups=m * c)
    x = F.conv2d(x, kernel.view(m * c, 1, -1, 1), groups=m * c)
    views[rows] = x.view(m, c, h, w)
    return views


def solarize(views: Tensor, mask: Tensor) -> Tensor:
    """PIL's solarize at threshold 128 on the masked rows of float views in [0, 1]: bright values v become 1 - v.

    PIL compares uint8 values, so a float view value solarizes when it would round to 128 or more, i.e. when
    value x 255 >= 127.5 (the same as value >= 0.5, BYOL's definition).
    """
    return _selected(views, mask, lambda v: torch.where(v * 255 >= 127.5, 1 - v, v))


def flip(views: Tensor, mask: Tensor) -> Tensor:
    return _selected(views, mask, lambda v: v.flip(-1))


def normalize(views: Tensor) -> Tensor:
    """ToTensor + Normalize(ImageNet mean, std) for float views in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, device=views.device, dtype=views.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=views.device, dtype=views.dtype).view(1, 3, 1, 1)
    return (views - mean) / std


def rgb_to_hsv(rgb: Tensor) -> Tensor:
    """(M, 3, H, W) RGB in [0, 1] to HSV with hue in [0, 1) (torchvision's formulas)."""
    r, g, b = rgb.unbind(dim=1)
    maxc, _ = rgb.max(dim=1)
    minc, _ = rgb.min(dim=1)
    delta = maxc - minc
    gray = delta == 0
    safe_max = torch.where(gray, torch.ones_like(maxc), maxc)
    saturation = delta / safe_max
    safe_delta = torch.where(gray, torch.ones_like(delta), delta)
    rc, gc, bc = (maxc - r) / safe_delta, (maxc - g) / safe_delta, (maxc - b) / safe_delta
    hue = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.where(gray, torch.zeros_like(hue), hue)
    hue = (hue / 6.0 + 1.0) % 1.0
    return torch.stack([hue, saturation, maxc], dim=1)


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    """The inverse of `rgb_to_hsv`."""
    hue, saturation, value = hsv.unbind(dim=1)
    sector = torch.floor(hue * 6.0)
    fraction = hue * 6.0 - sector
    sector = sector.long() % 6
    p = (value * (1.0 - saturation)).clamp(0.0, 1.0)
    q = (value * (1.0 - saturation * fraction)).clamp(0.0, 1.0)
    t = (value * (1.0 - saturation * (1.0 - fraction))).clamp(0.0, 1.0)
    # Sector s takes (r, g, b) from these candidates: (v,t,p) (q,v,p) (p,v,t) (p,q,v) (t,p,v) (v,p,q).
    candidates = torch.stack([value, q, p, p, t, value, t, value, value, q, p, p, p, p, t, value, value, q],
                             dim=1).view(hsv.shape[0], 3, 6, *hsv.shape[2:])
    return candidates.gather(2, sector.unsqueeze(1).unsqueeze(1).expand(-1, 3, 1, -1, -1)).squeeze(2)
