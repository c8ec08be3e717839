"""The fast pretraining data path: a resized-image cache and cheaper, output-identical pretraining views.

Cache: decode every photo once, store it downscaled, read it back without decoding.

S3L pretrains at 56 or 112 px, but a CUB photo is about 500 x 375 px: the upstream pipeline decodes the full
JPEG and then throws most of its pixels away, twice per image (query and key views). The cache decodes each
image once, resizes it so its shorter side is just large enough for the pretraining crops
(`cache_short_side`), and stores the pixels as raw uint8 RGB in one memory-mapped `.npy` per split.

Raw pixels rather than re-encoded JPEG (LitData's compressed shards, `dataset.format=litdata` in `s3l.data.stream`,
are for data beyond one machine's disk):
reading a cached 251 x 335 image is a memory copy (~0.1 ms) where decoding it from a quality-95 JPEG takes
~1 ms (PIL; ~0.6 ms with torchvision.io.decode_jpeg), a quarter of what is left per image at 112 px on one
CPU core. The price is disk: 3 bytes per pixel (CUB train, 5,994 images: ~0.4 GB at 56 px, ~1.5 GB at 112).

A cache lives in `cache_dir/<name>/`, where the name holds a hash of the sample list (paths, labels, file
sizes and modification times), the class names and the short side, so a changed dataset or size gets a new
cache and an unchanged one is reused. It is built in a temporary folder and renamed into place, so an
interrupted build leaves nothing that looks finished, under an exclusive lock, so concurrent builders wait for
the first one and the next builder removes what an interrupted one left.

Augmentation: with the cache, augmenting the small crops is most of what is left, colour jitter first (its
hue shift converts to HSV and back), then resize, blur and the float conversion. `fast_view_transform`
draws the same random parameters in the same order as `view_transform` (same `ViewSpec`) and gives the same
pixels, but shifts hue in one numpy pass instead of split/merge (~40% faster) and returns uint8 tensors that
`collate_normalized` turns into normalised floats once per batch instead of once per view. (torchvision's
transforms v2 on uint8 tensors were measured ~2x slower per image than these PIL ones, so they are not used.)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.progress import track
from torch.utils.data import Dataset, default_collate
from torchvision import transforms
from torchvision.transforms import functional as F

from s3l.data.datasets import load_rgb
from s3l.data.transforms import IMAGENET_MEAN, IMAGENET_STD, view_ops
from s3l.data.views import ViewSpec, smallest_min_scale
from s3l.errors import S3LError
from s3l.lock import ProcessLock

logger = logging.getLogger("s3l.data")

# Bump when the stored layout or the resizing changes, so older caches are not reused.
CACHE_VERSION = 2  # 2: transparency over white, 16-bit grey scaled (s3l.data.images)
PIXELS = "pixels.npy"  # all images, raw RGB uint8, concatenated (one flat array)
INDEX = "index.npy"  # int64 (N, 3): offset into pixels, height, width
META = "meta.json"  # classes, samples (original path, label), skipped files, short side
# torchvision's Resize default for PIL images (antialiased bilinear): a cache whose short side is exactly
# what an eval/fine-tune pipeline resizes to then holds the very pixels that Resize would have produced.
RESAMPLE = Image.Resampling.BILINEAR


def cache_short_side(resolution: int, min_scale: float) -> int:
    """The cached short side for RandomResizedCrop(resolution, scale=(min_scale, 1)) crops.

    The smallest crop covers a fraction `min_scale` of the image area, so its side is about
    sqrt(min_scale) x the short side (the 3/4..4/3 aspect ratio aside). For that crop to be resized from at
    least `resolution` source pixels, never upsampled, the short side must be at least
    resolution / sqrt(min_scale), rounded up: 126 for 56 px, 251 for 112 px, 501 for 224 px (at min_scale
    0.2). Images already smaller are stored at their own size (`build_resized_cache` never upscales).
    """
    if not 0 < min_scale <= 1:
        raise S3LError(f"the crop's min_scale must be in (0, 1], got {min_scale}")
    return math.ceil(resolution / math.sqrt(min_scale))


def views_short_side(resolution: int, views: tuple[ViewSpec, ViewSpec]) -> int:
    """The short side that pretraining views at `resolution` need: `cache_short_side` of their smallest crop."""
    return cache_short_side(resolution, smallest_min_scale(views))


def resized_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the shorter side at `short_side`, computed as torchvision's Resize does.

    Images whose short side is already at most `short_side` keep their size.
    """
    short, long = min(width, height), max(width, height)
    if short <= short_side:
        return width, height
    new_long = int(short_side * long / short)  # torchvision truncates too
    return (short_side, new_long) if width <= height else (new_long, short_side)


def stored_size(path: Path, short_side: int) -> tuple[int, int]:
    """The (width, height) an image file is stored at, `resized_size` of its header's size."""
    with Image.open(path) as image:  # reads the header only
        return resized_size(*image.size, short_side)


def stored_meta(dataset: Dataset, short_side: int) -> dict:
    """What a store of resized images (the cache, LitData shards) says about the dataset it holds."""
    return {
        "short_side": short_side,
        "classes": list(dataset.classes),
        "samples": [[str(path), int(label)] for path, label in dataset.samples],
        "skipped": [str(path) for path in getattr(dataset, "skipped", [])],
    }


def cache_key(dataset: Dataset, short_side: int) -> str:
    """A hash of what the cache depends on: sample files (path, label, size, mtime), classes, short side, and
    the subset list applied (two subsets never share a cache, even where they pick the same files)."""
    files = []
    for path, label in dataset.samples:
        stat = os.stat(path)
        files.append([str(Path(path).resolve()), int(label), stat.st_size, stat.st_mtime_ns])
    subset = getattr(dataset, "subset", None)
    identity = {"version": CACHE_VERSION, "short_side": short_side, "classes": list(dataset.classes),
                "samples": files, "subset": None if subset is None else subset.sha256}
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]


def build_resized_cache(dataset: Dataset, target_short_side: int, cache_dir: Path) -> Path:
    """The cache folder of `dataset` at `target_short_side`, built now unless an up-to-date one exists.

    `dataset` is a file-backed dataset with `.samples` [(path, label)], `.classes` and `.skipped` (e.g.
    `CUB200`, `ImageFolderSplit`). Every image is decoded once, resized (antialiased bilinear, aspect ratio
    kept, never upscaled) so its shorter side is `target_short_side`, and stored; open the result with
    `CachedImages`.
    """
    if not hasattr(dataset, "samples"):
        raise S3LError(
            f"the image cache needs a dataset read from files, not {type(dataset).__name__}: "
            "set dataset.cache=false for it"
        )
    if target_short_side < 1:
        raise S3LError(f"the cache's short side must be a positive number of pixels, got {target_short_side}")
    cache_dir = Path(cache_dir).expanduser()
    name = f"{type(dataset).__name__.lower()}_{len(dataset.samples)}img_{target_short_side}px_" + cache_key(
        dataset, target_short_side
    )
    final = cache_dir / name
    if (final / META).is_file():
        logger.info("using the resized image cache %s", final)
        return final
    started = time.perf_counter()
    if build_once(final, META, lambda folder: _write_cache(dataset, target_short_side, folder)):
        megabytes = (final / PIXELS).stat().st_size / 2**20
        logger.info("built the resized image cache %s (%d images, %.0f MB) in %.1f s",
                    final, len(dataset.samples), megabytes, time.perf_counter() - started)
    return final


def build_once(final: Path, marker: str, write) -> bool:
    """Make `final` by `write(folder)` unless it already holds `marker` (the file written last); True if built.

    One builder at a time (DDP ranks, parallel sweep jobs) under an exclusive lock beside it: the others wait,
    then find it finished. `write` fills a temporary folder that is renamed into place, so an interrupted build
    leaves nothing that looks finished, and the next builder removes what it left.
    """
    if (final / marker).is_file():
        return False
    final.parent.mkdir(parents=True, exist_ok=True)
    lock = ProcessLock(final.parent / f".{final.name}.lock")
    lock.acquire()
    try:
        if (final / marker).is_file():
            return False
        for stale in final.parent.glob(f".{final.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            write(tmp)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # already gone after the rename; a partial build otherwise
    finally:
        lock.release()
    return True


def _write_cache(dataset: Dataset, short_side: int, folder: Path) -> None:
    folder.mkdir()
    paths = [Path(path) for path, _ in dataset.samples]
    sizes = [stored_size(path, short_side) for path in paths]
    lengths = np.array([width * height * 3 for width, height in sizes], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    pixels = np.lib.format.open_memmap(folder / PIXELS, mode="w+", dtype=np.uint8, shape=(int(lengths.sum()),))
    # Decoding and resizing release the GIL, so threads use every core.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        resized = pool.map(load_resized, paths, sizes)
        for offset, array in track(zip(offsets, resized), total=len(paths),
                                   description=f"caching images at {short_side} px"):
            pixels[offset : offset + array.size] = array.reshape(-1)
    pixels.flush()
    del pixels
    index = np.stack([offsets, [h for _, h in sizes], [w for w, _ in sizes]], axis=1).astype(np.int64)
    np.save(folder / INDEX, index)
    (folder / META).write_text(json.dumps({"version": CACHE_VERSION, **stored_meta(dataset, short_side)}))


def load_resized(path: Path, size: tuple[int, int]) -> np.ndarray:
    image = load_rgb(path)
    if image.size != size:
        image = image.resize(size, RESAMPLE)
    return np.asarray(image)


class CachedImages(Dataset):
    """A dataset read from a `build_resized_cache` folder: `(PIL RGB image, label)` like `LabelledImages`.

    Exposes `.classes`, `.targets`, `.samples` (original paths) and `.skipped` of the dataset it was built
    from, and `.short_side`. The pixels are memory-mapped, so DataLoader workers share the page cache instead
    of each holding a copy.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        if not (self.folder / META).is_file():
            raise S3LError(f"'{self.folder}' is not a finished image cache: build it with build_resized_cache")
        meta = json.loads((self.folder / META).read_text())
        self.classes: list[str] = meta["classes"]
        self.samples = [(Path(path), label) for path, label in meta["samples"]]
        self.targets = [label for _, label in self.samples]
        self.skipped = [Path(path) for path in meta["skipped"]]
        self.short_side: int = meta["short_side"]
        self.index = np.load(self.folder / INDEX)
        self._pixels: np.ndarray | None = None  # opened on first use, in each worker process

    def __getstate__(self) -> dict:
        # Pickling an open memmap would copy every pixel into each DataLoader worker: reopen it there.
        return {**self.__dict__, "_pixels": None}

    def __len__(self) -> int:
        return len(self.samples)

    def array(self, index: int) -> np.ndarray:
        """The cached (height, width, 3) uint8 pixels of sample `index` (a read-only view)."""
        if self._pixels is None:
            self._pixels = np.load(self.folder / PIXELS, mmap_mode="r")
        offset, height, width = (int(v) for v in self.index[index])
        return self._pixels[offset : offset + height * width * 3].reshape(height, width, 3)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.array(index)), self.targets[index]


def adjust_hue(image: Image.Image, hue_factor: float) -> Image.Image:
    """torchvision's PIL `adjust_hue` (same pixels): rotate the HSV hue channel by hue_factor of a turn.

    One numpy add on the HSV array instead of splitting and merging three bands: ~40% faster.
    """
    hsv = np.array(image.convert("HSV"))
    hsv[..., 0] += np.int32(hue_factor * 255).astype(np.uint8)  # wraps around, as torchvision's does
    # frombuffer, not fromarray(..., "HSV"): Pillow 11.3 to 12 deprecate fromarray's mode argument.
    return Image.frombuffer("HSV", image.size, hsv, "raw", "HSV", 0, 1).convert(image.mode)


class FastColorJitter(transforms.ColorJitter):
    """`ColorJitter` with the same random draws and output, using the faster `adjust_hue` (RGB PIL images)."""

    def forward(self, image: Image.Image) -> Image.Image:
        order, brightness, contrast, saturation, hue = self.get_params(
            self.brightness, self.contrast, self.saturation, self.hue
        )
        for step in order.tolist():
            if step == 0 and brightness is not None:
                image = F.adjust_brightness(image, brightness)
            elif step == 1 and contrast is not None:
                image = F.adjust_contrast(image, contrast)
            elif step == 2 and saturation is not None:
                image = F.adjust_saturation(image, saturation)
            elif step == 3 and hue is not None:
                image = adjust_hue(image, hue)
        return image


def fast_view_transform(size: int, spec: ViewSpec) -> transforms.Compose:
    """`view_transform` ending in a uint8 (3, size, size) tensor; batch it with `collate_normalized`.

    Same operations (solarize included: PIL's, as torchvision's RandomSolarize on PIL images), random draws
    and order, so with the same random state the normalised batch equals `view_transform`'s (up to float
    rounding).
    """
    return transforms.Compose([*view_ops(size, spec, FastColorJitter), transforms.PILToTensor()])


# ToTensor then Normalize is (x / 255 - mean) / std = (x - 255 mean) / (255 std).
_MEAN_255 = torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255
_STD_255 = torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255


def normalize_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) images as ToTensor + Normalize(ImageNet mean, std) would give them, in float32."""
    return images.float().sub_(_MEAN_255).div_(_STD_255)


def collate_normalized(samples: list):
    """`default_collate`, then every uint8 image batch normalised (one pass per batch, not per view).

    Handles `(image, label)` and `([view1, view2], label)` samples, as made by `fast_view_transform` alone or
    inside `MultiViewTransform`.
    """
    images, labels = default_collate(samples)
    if isinstance(images, list):
        return [normalize_uint8(views) for views in images], labels
    return normalize_uint8(images), labels
