"""The device-resident data path (`dataset.resident=true`): the resized images live on the training device.

The resized-image cache (`s3l.data.cache`) of each split a stage reads is copied once onto the training device
as uint8 tensors, and every step samples and augments a whole batch there: no DataLoader workers, no copy of
images from the host per step. The host only walks the epoch's order and draws each image's random
parameters (a few floats per view), with the same calls and the same seeds as the other paths:

- the order is `EpochSampler`'s (DistributedSampler's permutation from seed + epoch, sharded over the DDP
  ranks), and each image's draws are seeded with `sample_seed(seed, epoch, index)`. Lightning sets the
  sampler's epoch before every epoch (also on resume), and nothing else is drawn, so a run resumed at an epoch
  boundary sees the same batches;
- pretraining: the two views of `augment_on=device` (`RawViewsTransform.draw_view_params`, `pad_images`,
  `realize_views`): for the same seed, the same views as `dataset.cache=true dataset.augment_on=device`;
- fine-tuning (`train_crop=random_crop`): Resize(size / 0.875) is the cache itself (the same PIL resize),
  then torchvision's RandomHorizontalFlip and RandomCrop draws, cut from the resident image: the PIL
  pipeline's pixels; `random_resized_crop` (linear): RandomResizedCrop's draws on the cached image, cropped
  and resized by `roi_align` as in `s3l.data.device_augment`, and flip;
- evaluation on the test split: Resize(size / 0.875) + CenterCrop from resident tensors.

Mixup stays in `Classifier.training_step`, already on the device.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from torch import Tensor
from torchvision import transforms
from torchvision.transforms import functional as TF

from s3l.config import StageSpec
from s3l.data.cache import CachedImages, build_resized_cache, cache_short_side, views_short_side
from s3l.data.device_augment import (
    RawViews,
    RawViewsTransform,
    normalize,
    pad_images,
    realize_views,
    resized_crops,
)
from s3l.data.sampling import EpochSampler, sample_seed, seeded_draws, stage_seed
from s3l.data.transforms import resize_side
from s3l.data.views import ViewSpec, view_specs
from s3l.errors import S3LError

log = logging.getLogger("s3l.data")

# torchvision's RandomResizedCrop defaults (upstream --random-resized-crop and linear evaluation).
RRC_SCALE, RRC_RATIO = (0.08, 1.0), (3 / 4, 4 / 3)
# A crop's parameters: (top, left, height, width) as in s3l.data.device_augment, then the flip decision.
TOP, LEFT, HEIGHT, WIDTH, FLIP = range(5)


def resize_shape(height: int, width: int, side: int | None) -> tuple[int, int]:
    """(height, width) after torchvision's Resize(side) (short side to `side`, upscaling too); None: as is."""
    short, long = min(height, width), max(height, width)
    if side is None or short == side:
        return height, width
    new_long = int(side * long / short)  # torchvision truncates
    return (new_long, side) if width <= height else (side, new_long)


class ResidentImages:
    """One split's images packed on one device: uint8 (3, h, w) images end to end in one flat tensor.

    Packed rather than padded into size buckets: CUB's aspect ratios vary (portrait and landscape, long sides
    from 1x to 2x the short one), so a bucket pads to its widest image and wastes memory, while a batch is
    padded anyway (`pad_images`) to the very canvas the cache + `augment_on=device` path builds, which keeps
    the views identical to that path's.
    """

    def __init__(self, pixels: Tensor, shapes: np.ndarray, targets: list[int]) -> None:
        self.pixels = pixels
        self.shapes = shapes  # int64 (N, 2): height, width
        self.offsets = np.concatenate([[0], np.cumsum(3 * shapes.prod(axis=1))[:-1]]).astype(np.int64)
        self.targets = targets

    @staticmethod
    def shapes_of(cache: CachedImages, side: int | None) -> np.ndarray:
        """The (height, width) of every image once resident (`side`: upscale smaller images, as Resize)."""
        return np.array([resize_shape(int(h), int(w), side) for _, h, w in cache.index], dtype=np.int64)

    @classmethod
    def load(cls, cache: CachedImages, device: torch.device, side: int | None = None) -> ResidentImages:
        """The cached images on `device`, channels first; with `side`, an image whose short side is below it is
        resized up with torchvision's Resize(side) (the cache never upscales, the PIL pipeline does)."""
        shapes = cls.shapes_of(cache, side)
        pixels = torch.empty(int(3 * shapes.prod(axis=1).sum()), dtype=torch.uint8, device=device)
        images = cls(pixels, shapes, list(cache.targets))
        for index, (height, width) in enumerate(shapes):
            array = cache.array(index)
            if array.shape[:2] != (height, width):
                array = np.asarray(TF.resize(Image.fromarray(array), [int(height), int(width)]))
            images.image(index).copy_(torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))))
        return images

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def nbytes(self) -> int:
        return self.pixels.numel()

    def image(self, index: int) -> Tensor:
        """The uint8 (3, h, w) pixels of image `index` (a view into the packed tensor, no copy)."""
        height, width = (int(v) for v in self.shapes[index])
        offset = int(self.offsets[index])
        return self.pixels[offset : offset + 3 * height * width].view(3, height, width)


class ResidentViews(Protocol):
    """How a batch is made from resident images: `draw` one image's parameters (host, seeded by the
    loader), then `realize` the batch on the images' device."""

    def draw(self, image: Tensor) -> Tensor: ...

    def realize(self, images: list[Tensor], params: Tensor, labels: Tensor): ...


class TwoViews:
    """Pretraining: ([view1, view2], labels) exactly as the cache + `augment_on=device` path makes them."""

    def __init__(self, views: tuple[ViewSpec, ViewSpec], size: int) -> None:
        self.raw = RawViewsTransform(views)
        self.size = size

    def draw(self, image: Tensor) -> Tensor:
        return torch.stack([self.raw.draw_view_params(image, view) for view in range(len(self.raw.specs))])

    def realize(self, images: list[Tensor], params: Tensor, labels: Tensor):
        batch = pad_images(images)
        return realize_views(RawViews(batch, params.to(batch.device), labels, self.size))


class Crops:
    """Fixed-size crops cut from the resident images, then flipped where drawn: (images, labels)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def realize(self, images: list[Tensor], params: Tensor, labels: Tensor):
        s = self.size
        crops = torch.stack([image[:, top : top + s, left : left + s]
                             for image, (top, left) in zip(images, params[:, [TOP, LEFT]].long().tolist())])
        flipped = params[:, FLIP].nonzero().squeeze(1).to(crops.device)
        crops[flipped] = crops[flipped].flip(-1)
        return normalize(crops.float().div_(255)), labels


class RandomCropFlip(Crops):
    """The fine-tuning view (`finetune_train_transform` after its Resize): RandomHorizontalFlip, then
    RandomCrop, with torchvision's draws in that order."""

    def draw(self, image: Tensor) -> Tensor:
        flip = float(torch.rand(1) < 0.5)
        top, left, _, _ = transforms.RandomCrop.get_params(image, (self.size, self.size))
        if flip:  # the crop was drawn on the flipped image: the same pixels, mirrored, from the other side
            left = image.shape[-1] - left - self.size
        return torch.tensor([top, left, self.size, self.size, flip])


class CenterCrop(Crops):
    """The evaluation view (`eval_transform` after its Resize): CenterCrop, no random draw."""

    def draw(self, image: Tensor) -> Tensor:
        height, width = image.shape[1:]
        top, left = int(round((height - self.size) / 2.0)), int(round((width - self.size) / 2.0))
        return torch.tensor([top, left, self.size, self.size, 0.0])


class RandomResizedCropFlip:
    """The linear-evaluation view (`random_resized_crop_train_transform`): RandomResizedCrop's draws, then
    the flip's, the crop resized on the device by `roi_align` (area-averaged, as the pretraining views)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def draw(self, image: Tensor) -> Tensor:
        top, left, height, width = transforms.RandomResizedCrop.get_params(image, list(RRC_SCALE), list(RRC_RATIO))
        return torch.tensor([top, left, height, width, float(torch.rand(1) < 0.5)])

    def realize(self, images: list[Tensor], params: Tensor, labels: Tensor):
        batch = pad_images(images)
        params = params.to(batch.device)
        views = resized_crops(batch.float().div_(255), params, self.size)
        flipped = params[:, FLIP].nonzero().squeeze(1)
        views[flipped] = views[flipped].flip(-1)
        return normalize(views), labels


class ResidentLoader:
    """One epoch of batches made on the device: an iterable with a length, as Lightning accepts.

    `sampler` is an `EpochSampler`; Lightning finds it as `.sampler` and sets its epoch before every epoch.
    The draws run on the host, image by image: measured on the 2-core development CPU, 0.11 ms per image for
    two MoCo v2 or BYOL views, seeding included (15 ms per step at batch 128), 0.04 ms for a fine-tuning crop.
    On a GPU they overlap the previous step's queued kernels; the images never leave the device.
    """

    batch_sampler = None  # Lightning reads it beside `sampler`, as on a DataLoader

    def __init__(self, images: ResidentImages, views: ResidentViews, batch_size: int, sampler: EpochSampler,
                 drop_last: bool, seed: int) -> None:
        self.images, self.views, self.sampler = images, views, sampler
        self.batch_size, self.drop_last, self.seed = batch_size, drop_last, seed

    def __len__(self) -> int:
        batches = len(self.sampler) / self.batch_size
        return math.floor(batches) if self.drop_last else math.ceil(batches)

    def __iter__(self) -> Iterator:
        keys = list(self.sampler)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield self.batch(keys[start : start + self.batch_size])

    def batch(self, keys: list[tuple[int, int]]):
        """The batch of these (epoch, index) keys, on the images' device."""
        images, params = [], []
        for epoch, index in keys:
            image = self.images.image(index)
            with seeded_draws(sample_seed(self.seed, epoch, index)):
                params.append(self.views.draw(image))
            images.append(image)
        device = self.images.pixels.device
        labels = torch.tensor([self.images.targets[index] for _, index in keys], device=device)
        return self.views.realize(images, torch.stack(params), labels)


class ResidentSplit:
    """A split to make resident: its cache, the short side its view needs (None: as cached) and its view."""

    def __init__(self, cache: CachedImages, side: int | None, views: ResidentViews) -> None:
        self.cache, self.side, self.views = cache, side, views

    def nbytes(self) -> int:
        return int(3 * ResidentImages.shapes_of(self.cache, self.side).prod(axis=1).sum())


class ResidentDataModule(L.LightningDataModule):
    """Train batches made on the training device from resident images (see the module docstring).

    The images are loaded in `setup`, where the device is known, after checking they fit into
    `memory_fraction` of its memory. Nothing but the epoch is state, and Lightning restores that.
    """

    def __init__(self, train: ResidentSplit, global_batch_size: int, drop_last: bool, seed: int,
                 memory_fraction: float) -> None:
        super().__init__()
        self.splits = {"train": train}
        self.global_batch_size, self.drop_last, self.seed = global_batch_size, drop_last, seed
        self.memory_fraction = memory_fraction
        self.resident: dict[str, ResidentImages] = {}

    def setup(self, stage: str) -> None:
        if self.resident:
            return
        device = self.trainer.strategy.root_device
        check_fits(sum(split.nbytes() for split in self.splits.values()), device, self.memory_fraction)
        for name, split in self.splits.items():
            self.resident[name] = ResidentImages.load(split.cache, device, split.side)
        log.info("resident data: %s on %s", ", ".join(f"{name} {images.nbytes / 2**20:.0f} MB"
                                                     for name, images in self.resident.items()), device)

    def _per_device_batch(self) -> int:
        return self.global_batch_size // self.trainer.world_size

    def train_dataloader(self) -> ResidentLoader:
        images = self.resident["train"]
        return ResidentLoader(images, self.splits["train"].views, self._per_device_batch(),
                              EpochSampler(images, self.seed), self.drop_last, self.seed)


class ResidentClassifyDataModule(ResidentDataModule):
    """`ResidentDataModule` with the test split, evaluated every epoch (as `ClassifyDataModule`)."""

    def __init__(self, train: ResidentSplit, test: ResidentSplit, global_batch_size: int, seed: int,
                 memory_fraction: float) -> None:
        super().__init__(train, global_batch_size, drop_last=False, seed=seed, memory_fraction=memory_fraction)
        self.splits["test"] = test

    def val_dataloader(self) -> ResidentLoader:
        images = self.resident["test"]
        return ResidentLoader(images, self.splits["test"].views, self._per_device_batch(),
                              EpochSampler(images, self.seed, shuffle=False), drop_last=False, seed=self.seed)


def available_memory(device: torch.device) -> int:
    """Bytes free on `device`: the GPU's free memory, or the host's free RAM (page cache not counted)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fits(nbytes: int, device: torch.device, fraction: float) -> None:
    """S3LError (one line with both sizes) unless `nbytes` fit into `fraction` of the free memory of `device`."""
    free = available_memory(device)
    if nbytes > fraction * free:
        raise S3LError(
            f"dataset.resident=true needs {_size(nbytes)} on {device} for the resized images, more than "
            f"dataset.resident_memory_fraction={fraction} of its {_size(free)} free: lower the resolution, raise "
            "the fraction, or set dataset.resident=false"
        )


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


def _cached(cfg: DictConfig, dataset, side: int) -> CachedImages:
    return CachedImages(build_resized_cache(dataset, side, Path(cfg.dataset.cache_dir)))


def _common(cfg: DictConfig, spec: StageSpec) -> dict:
    return {"global_batch_size": spec.cfg.batch_size, "seed": stage_seed(cfg.seed, spec.name),
            "memory_fraction": cfg.dataset.resident_memory_fraction}


def resident_pretrain_datamodule(cfg: DictConfig, spec: StageSpec, train) -> ResidentDataModule:
    """A pretraining stage's `ResidentDataModule`: the cache built (or reused) at the short side the views need."""
    views, size = view_specs(cfg.augmentation), spec.cfg.resolution
    side = views_short_side(size, views)
    # drop_last as upstream: a queue and split BatchNorm need whole batches.
    return ResidentDataModule(ResidentSplit(_cached(cfg, train, side), None, TwoViews(views, size)),
                              drop_last=True, **_common(cfg, spec))


def resident_classify_datamodule(cfg: DictConfig, spec: StageSpec, train, test) -> ResidentClassifyDataModule:
    """A supervised stage's `ResidentClassifyDataModule`: train crops as the PIL pipeline's, test center crops."""
    s = spec.cfg
    resized = resize_side(s.resolution)
    if s.train_crop == "random_resized_crop":
        train_split = ResidentSplit(_cached(cfg, train, cache_short_side(s.resolution, RRC_SCALE[0])), None,
                                    RandomResizedCropFlip(s.resolution))
    else:
        train_split = ResidentSplit(_cached(cfg, train, resized), resized, RandomCropFlip(s.resolution))
    test_split = ResidentSplit(_cached(cfg, test, resized), resized, CenterCrop(s.resolution))
    return ResidentClassifyDataModule(train_split, test_split, **_common(cfg, spec))
