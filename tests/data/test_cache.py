"""The resized-image cache and the fast views, on real CUB photos (../shared/datasets, read-only)."""

import math
import os
import pickle
import random
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset, default_collate
from torchvision import transforms
from torchvision.transforms import functional as F

import s3l.data.cache as cache
from s3l.data.cache import (
    CachedImages,
    adjust_hue,
    build_resized_cache,
    cache_short_side,
    collate_normalized,
    fast_view_transform,
    normalize_uint8,
)
from s3l.data.datasets import CUB200, LabelledImages
from s3l.data.transforms import MultiViewTransform, view_transform
from s3l.data.views import smallest_min_scale
from s3l.errors import S3LError
from tests.data.test_views import preset

CUB = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "cub_200_2011_10cls" / "CUB_200_2011"
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def subset(dataset, samples) -> LabelledImages:
    return LabelledImages(list(samples), dataset.classes, "fail", "test subset", "a test layout")


@pytest.fixture(scope="module")
def cub_train():
    return CUB200(str(CUB), "train", "fail")


@pytest.fixture(scope="module")
def photos(cub_train):
    """16 train photos, two per class of the first 8 classes (full size about 500 x 375)."""
    per_class = {}
    for path, label in cub_train.samples:
        per_class.setdefault(label, []).append((path, label))
    return subset(cub_train, [s for label in sorted(per_class)[:8] for s in per_class[label][:2]])


def decoded(path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def test_cache_short_side_leaves_the_smallest_crop_at_least_resolution_pixels():
    assert cache_short_side(112, 0.2) == 251  # 112 / sqrt(0.2) = 250.4, rounded up
    assert cache_short_side(56, 0.2) == 126  # 125.2
    assert cache_short_side(224, 0.2) == 501
    assert cache_short_side(224, 1.0) == 224
    for resolution, scale in [(112, 0.2), (56, 0.2), (96, 0.08)]:
        assert math.sqrt(scale) * cache_short_side(resolution, scale) >= resolution
    with pytest.raises(S3LError, match="min_scale"):
        cache_short_side(112, 0.0)


def test_cached_images_have_the_target_short_side_and_keep_their_aspect(photos, tmp_path):
    cached = CachedImages(build_resized_cache(photos, 64, tmp_path))
    assert len(cached) == len(photos) == 16
    assert cached.classes == photos.classes and cached.targets == photos.targets
    assert cached.samples == photos.samples and cached.skipped == [] and cached.short_side == 64
    for index, (path, label) in enumerate(photos.samples):
        image, cached_label = cached[index]
        width, height = decoded(path).size
        assert image.mode == "RGB" and cached_label == label
        assert min(image.size) == 64
        long_side = int(64 * max(width, height) / min(width, height))  # torchvision Resize's rounding
        assert max(image.size) == long_side
        assert (image.width > image.height) == (width > height)


def test_images_smaller_than_the_target_are_stored_as_they_are(photos, tmp_path):
    cached = CachedImages(build_resized_cache(photos, 10_000, tmp_path))
    for index, (path, _) in enumerate(photos.samples[:4]):
        np.testing.assert_array_equal(np.asarray(cached[index][0]), np.asarray(decoded(path)))


def test_cache_is_built_once_and_reused_without_decoding(photos, tmp_path, monkeypatch):
    folder = build_resized_cache(photos, 48, tmp_path)
    stamp = os.stat(folder / cache.PIXELS).st_mtime_ns

    def no_decoding(*args):
        raise AssertionError("the cache was rebuilt")

    monkeypatch.setattr(cache, "load_resized", no_decoding)
    assert build_resized_cache(photos, 48, tmp_path) == folder
    assert os.stat(folder / cache.PIXELS).st_mtime_ns == stamp
    assert entries(tmp_path) == [folder.name]  # no temporary folder left behind


def test_cache_is_rebuilt_for_another_size_or_sample_list(photos, tmp_path):
    first = build_resized_cache(photos, 48, tmp_path)
    other_size = build_resized_cache(photos, 40, tmp_path)
    fewer = build_resized_cache(subset(photos, photos.samples[:10]), 48, tmp_path)
    assert len({first, other_size, fewer}) == 3
    assert len(CachedImages(fewer)) == 10 and CachedImages(other_size).short_side == 40


def test_cache_is_rebuilt_when_an_image_file_changes(photos, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    copies = [(Path(shutil.copy(path, images / f"{i}.jpg")), label) for i, (path, label) in
              enumerate(photos.samples[:4])]
    before = build_resized_cache(subset(photos, copies), 32, tmp_path / "cache")
    stat = copies[0][0].stat()
    os.utime(copies[0][0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a new file at the same path
    after = build_resized_cache(subset(photos, copies), 32, tmp_path / "cache")
    assert after != before and (after / cache.META).is_file()


def test_an_interrupted_build_leaves_no_cache(photos, tmp_path, monkeypatch):
    def broken(path, size):
        raise OSError("disk full")

    monkeypatch.setattr(cache, "load_resized", broken)
    with pytest.raises(OSError, match="disk full"):
        build_resized_cache(photos, 48, tmp_path)
    assert entries(tmp_path) == []


def entries(folder: Path) -> list[str]:
    """What a cache folder holds besides the builders' lock files (kept: a lock file must not be unlinked)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


def test_the_next_build_removes_what_a_killed_build_left(photos, tmp_path):
    name = build_resized_cache(photos, 48, tmp_path / "first").name
    stale = tmp_path / "cache" / f".{name}.tmp-deadbeef"
    stale.mkdir(parents=True)
    (stale / cache.PIXELS).write_bytes(b"half written")
    folder = build_resized_cache(photos, 48, tmp_path / "cache")
    assert entries(tmp_path / "cache") == [folder.name]


def test_concurrent_builders_build_once_and_share_the_cache(photos, tmp_path, monkeypatch):
    decoded_paths = []
    load = cache.load_resized

    def counting(path, size):
        decoded_paths.append(path)
        return load(path, size)

    monkeypatch.setattr(cache, "load_resized", counting)
    with ThreadPoolExecutor(max_workers=4) as pool:  # flock locks are per open file: threads contend too
        folders = set(pool.map(lambda _: build_resized_cache(photos, 48, tmp_path), range(4)))
    assert len(folders) == 1 and len(decoded_paths) == len(photos.samples)


def test_datasets_without_files_are_refused(tmp_path):
    in_memory = TensorDataset(torch.zeros(4, 3, 8, 8), torch.zeros(4))
    with pytest.raises(S3LError, match="dataset.cache=false"):
        build_resized_cache(in_memory, 8, tmp_path)


def test_cached_dataset_reaches_workers_without_its_pixels(photos, tmp_path):
    cached = CachedImages(build_resized_cache(photos, 64, tmp_path))
    cached[0]  # opens the memory map in this process
    copy = pickle.loads(pickle.dumps(cached))
    assert copy._pixels is None
    np.testing.assert_array_equal(np.asarray(copy[3][0]), np.asarray(cached[3][0]))


def test_deterministic_pipeline_gives_the_same_tensors_with_and_without_the_cache(photos, tmp_path):
    size = 56
    pipeline = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor()])
    # Cached at exactly the Resize target: the cache holds the very pixels Resize would produce.
    exact = CachedImages(build_resized_cache(photos, size, tmp_path))
    for index, (path, _) in enumerate(photos.samples):
        assert torch.equal(pipeline(exact[index][0]), pipeline(decoded(path)))
    # Cached at the pretraining short side (126 px): resized twice, once at build and once by Resize. Two
    # antialiased bilinear resizes blur slightly more than one: a few grey levels on edges, under 1/255 on
    # average (measured 0.0035); a 1-pixel difference in the truncated long side shifts the centre crop by
    # half a pixel, the worst photo then differs by 0.025 on average. 0.03 bounds that worst case.
    cached = CachedImages(build_resized_cache(photos, cache_short_side(size, 0.2), tmp_path))
    differences = []
    for index, (path, _) in enumerate(photos.samples):
        original, from_cache = pipeline(decoded(path)), pipeline(cached[index][0])
        assert from_cache.shape == original.shape == (3, size, size)
        assert 0 <= from_cache.min() and from_cache.max() <= 1
        differences.append((original - from_cache).abs().mean().item())
    assert max(differences) < 0.03 and np.mean(differences) < 0.01


def test_moco_v2_views_are_alike_with_and_without_the_cache(photos, tmp_path):
    size = 56
    augmentation = view_transform(size, preset("mocov2")[0])
    cached = CachedImages(build_resized_cache(photos, cache_short_side(size, 0.2), tmp_path))

    def views(dataset):
        torch.manual_seed(0)
        random.seed(0)
        return torch.stack([augmentation(dataset[i % len(dataset)][0]) for i in range(192)])

    original, from_cache = views(photos), views(cached)
    assert original.shape == from_cache.shape == (192, 3, size, size)
    # Per-channel mean and spread of the normalised pixels. Crop positions differ even with the same seed
    # (randint over a smaller range), so these are two samples of the same distribution: the mean over 64
    # views varies by about 0.06 from seed to seed (measured), over 192 by ~0.035, so the difference of two
    # such means has a standard deviation of ~0.05 and 0.15 is ~3 of them. A swapped channel or a
    # missing normalisation moves these by 0.3 to 2.
    torch.testing.assert_close(from_cache.mean(dim=(0, 2, 3)), original.mean(dim=(0, 2, 3)), atol=0.15, rtol=0)
    torch.testing.assert_close(from_cache.std(dim=(0, 2, 3)), original.std(dim=(0, 2, 3)), atol=0.1, rtol=0)


@pytest.mark.parametrize("hue", [-0.1, -0.031, 0.0, 0.017, 0.1, 0.5])
def test_adjust_hue_gives_torchvision_s_pixels(photos, hue):
    photo = decoded(photos.samples[0][0]).resize((80, 60))
    np.testing.assert_array_equal(np.asarray(adjust_hue(photo, hue)), np.asarray(F.adjust_hue(photo, hue)))


@pytest.mark.parametrize("name", ["mocov2", "byol"])
def test_fast_views_give_the_pil_views(photos, tmp_path, name):
    size, views = 56, preset(name)
    cached = CachedImages(build_resized_cache(photos, cache_short_side(size, smallest_min_scale(views)), tmp_path))
    upstream = MultiViewTransform([view_transform(size, spec) for spec in views])
    fast = MultiViewTransform([fast_view_transform(size, spec) for spec in views])

    def batch(transform, seed):
        torch.manual_seed(seed)
        random.seed(seed)
        return [(transform(cached[i][0]), cached[i][1]) for i in range(len(cached))]

    for seed in range(3):
        (query, key), labels = default_collate(batch(upstream, seed))
        (fast_query, fast_key), fast_labels = collate_normalized(batch(fast, seed))
        assert fast_query.dtype == torch.float32 and fast_query.shape == (16, 3, size, size)
        assert torch.equal(fast_labels, labels)
        torch.testing.assert_close(fast_query, query, atol=1e-5, rtol=0)
        torch.testing.assert_close(fast_key, key, atol=1e-5, rtol=0)


def test_normalize_uint8_is_to_tensor_then_normalize():
    images = torch.tensor([[[[0, 255]], [[128, 1]], [[64, 200]]]], dtype=torch.uint8)  # (1, 3, 1, 2)
    expected = torch.stack([(images[0, c].float() / 255 - MEAN[c]) / STD[c] for c in range(3)])
    torch.testing.assert_close(normalize_uint8(images)[0], expected)
    single, label = collate_normalized([(images[0], 3), (images[0], 5)])
    torch.testing.assert_close(single[1], expected)
    assert label.tolist() == [3, 5]
