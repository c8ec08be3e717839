"""The device-resident data path: the same batches as the cache + on-device path and the PIL pipelines, the
epoch order and DDP shards of EpochSampler, and a dataset too large refused in one line."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from s3l.config import stage_specs
from s3l.data.cache import CachedImages, build_resized_cache, cache_short_side
from s3l.data.datamodule import Transformed, loader
from s3l.data.datasets import LabelledImages
from s3l.data.device_augment import RawViewsCollate, RawViewsTransform, realize_views
from s3l.data.resident import (
    RRC_SCALE,
    CenterCrop,
    RandomCropFlip,
    RandomResizedCropFlip,
    ResidentDataModule,
    ResidentImages,
    ResidentLoader,
    ResidentSplit,
    TwoViews,
)
from s3l.data.sampling import EpochSampler
from s3l.data.transforms import (
    IMAGENET_STD,
    eval_transform,
    finetune_train_transform,
    random_resized_crop_train_transform,
    resize_side,
)
from s3l.data.views import smallest_min_scale
from s3l.errors import S3LError
from s3l.validate import validate_config
from tests.conftest import CUB_SUBSET
from tests.data.test_views import PRESETS, preset

CPU = torch.device("cpu")
SIZE, BATCH, SEED = 32, 8, 11
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def photos(module_tmp) -> LabelledImages:
    """20 real CUB photos of several classes and one 30 x 20 px crop of one (smaller than any resize side)."""
    from s3l.data.datasets import CUB200

    cub = CUB200(str(CUB_SUBSET), "train", "fail")
    small = module_tmp / "small.png"
    with Image.open(cub.samples[0][0]) as image:
        image.convert("RGB").crop((100, 100, 130, 120)).save(small)
    samples = [*cub.samples[::15], (small, cub.samples[0][1])]
    return LabelledImages(samples, cub.classes, "fail", "the CUB subset", "")


@pytest.fixture(scope="module")
def cached(photos, module_tmp):
    folder = module_tmp / "cache"
    return lambda side: CachedImages(build_resized_cache(photos, side, folder))


def epochs(batches_of, sampler, epoch_numbers=(0, 1)) -> list:
    """Every batch of these epochs, the sampler's epoch set before each as Lightning does."""
    batches = []
    for epoch in epoch_numbers:
        sampler.set_epoch(epoch)
        batches.extend(batches_of())
    return batches


def resident_batches(images: ResidentImages, views, drop_last: bool = True, shuffle: bool = True) -> list:
    sampler = EpochSampler(images, SEED, shuffle=shuffle)
    resident = ResidentLoader(images, views, BATCH, sampler, drop_last, SEED)
    return epochs(lambda: list(resident), sampler)


def pil_batches(dataset, transform, drop_last: bool = False, collate=None, shuffle: bool = True) -> list:
    data = Transformed(dataset, transform, SEED)
    sampler = EpochSampler(data, SEED, shuffle=shuffle)
    load = loader(data, BATCH, 0, sampler=sampler, drop_last=drop_last, collate_fn=collate)
    return epochs(lambda: list(load), sampler)


@pytest.mark.parametrize("name", PRESETS)
def test_pretraining_batches_are_those_of_the_cache_and_device_path(cached, name):
    views = preset(name)
    cache = cached(cache_short_side(SIZE, smallest_min_scale(views)))
    expected = [realize_views(batch) for batch in
                pil_batches(cache, RawViewsTransform(views), drop_last=True, collate=RawViewsCollate(SIZE))]
    got = resident_batches(ResidentImages.load(cache, CPU), TwoViews(views, SIZE))
    assert len(got) == len(expected) == 2 * (len(cache) // BATCH)
    for (views_got, labels_got), (views_expected, labels_expected) in zip(got, expected):
        assert torch.equal(labels_got, labels_expected)
        assert views_got[0].shape == (BATCH, 3, SIZE, SIZE) and len(views_got) == 2
        for view_got, view_expected in zip(views_got, views_expected):
            assert torch.equal(view_got, view_expected)
    assert not torch.equal(got[0][0][0], got[len(got) // 2][0][0])  # epoch 1 draws anew


def numbered_images(count: int = 10) -> ResidentImages:
    """Random images of several sizes whose label is their index."""
    rng = np.random.default_rng(0)
    shapes = np.array([(6 + i % 3, 7 + i % 4) for i in range(count)], dtype=np.int64)
    pixels = torch.from_numpy(rng.integers(0, 256, int(3 * shapes.prod(axis=1).sum()), dtype=np.uint8))
    return ResidentImages(pixels, shapes, list(range(count)))


def order(images: ResidentImages, epoch: int, drop_last: bool) -> list[int]:
    sampler = EpochSampler(images, SEED)
    sampler.set_epoch(epoch)
    batches = ResidentLoader(images, CenterCrop(4), 3, sampler, drop_last, SEED)
    labels = [labels.tolist() for _, labels in batches]
    assert len(labels) == len(batches)
    return sum(labels, [])


def test_an_epoch_visits_the_epoch_samplers_order_and_drops_the_last_partial_batch():
    images = numbered_images(10)
    for epoch in (0, 3):
        sampler = EpochSampler(images, SEED)
        sampler.set_epoch(epoch)
        expected = [index for _, index in sampler]
        assert order(images, epoch, drop_last=False) == expected
        assert order(images, epoch, drop_last=True) == expected[:9]
    assert order(images, 0, drop_last=False) != order(images, 1, drop_last=False)


def test_two_ranks_get_disjoint_shards_that_cover_the_epoch(monkeypatch):
    images = numbered_images(10)
    shards = []
    for rank in (0, 1):
        monkeypatch.setattr("s3l.data.sampling.world", lambda rank=rank: (rank, 2))
        shards.append(order(images, 2, drop_last=False))
    assert len(shards[0]) == len(shards[1]) == 5
    assert sorted(shards[0] + shards[1]) == list(range(10))


def test_a_dataset_that_does_not_fit_is_refused_in_one_line_naming_both_sizes(cached):
    cache = cached(40)
    module = ResidentDataModule(ResidentSplit(cache, None, CenterCrop(SIZE)), BATCH, drop_last=True, seed=SEED,
                                memory_fraction=1e-9)
    module.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=CPU))
    with pytest.raises(S3LError) as error:
        module.setup("fit")
    message, needed = str(error.value), 3 * int(cache.index[:, 1:].prod(axis=1).sum())
    assert message.startswith(f"dataset.resident=true needs {needed / 2**20:.1f} MiB on cpu for the resized images")
    assert "more than dataset.resident_memory_fraction=1e-09 of its " in message and " free: " in message
    assert "\n" not in message and not module.resident
    module.memory_fraction = 0.5
    module.setup("fit")
    assert module.resident["train"].nbytes == needed


def test_finetuning_views_are_the_pil_pipelines_pixels(photos, cached):
    side = resize_side(SIZE)
    images = ResidentImages.load(cached(side), CPU, side)
    assert min(images.image(len(images) - 1).shape[1:]) == side  # the 30 x 20 photo, upscaled as Resize does
    expected = pil_batches(photos, finetune_train_transform(SIZE))
    got = resident_batches(images, RandomCropFlip(SIZE), drop_last=False)
    assert len(got) == len(expected) == 2 * 3
    for (images_got, labels_got), (images_expected, labels_expected) in zip(got, expected):
        assert torch.equal(labels_got, labels_expected)
        assert torch.equal(images_got, images_expected)  # the cache is the PIL Resize: the very same pixels


def test_test_split_views_are_the_pil_resize_and_center_crop(photos, cached):
    side = resize_side(SIZE)
    expected = pil_batches(photos, eval_transform(SIZE), shuffle=False)
    got = resident_batches(ResidentImages.load(cached(side), CPU, side), CenterCrop(SIZE), drop_last=False,
                           shuffle=False)
    assert [labels.tolist() for _, labels in got[:3]] == [labels.tolist() for _, labels in expected[:3]]
    for (images_got, _), (images_expected, _) in zip(got, expected, strict=True):
        assert torch.equal(images_got, images_expected)


def test_linear_views_draw_the_random_resized_crops_of_the_pil_pipeline(cached):
    cache = cached(cache_short_side(SIZE, RRC_SCALE[0]))
    images = ResidentImages.load(cache, CPU)
    expected = pil_batches(cache, random_resized_crop_train_transform(SIZE))
    got = resident_batches(images, RandomResizedCropFlip(SIZE), drop_last=False)
    errors = [(a - b).mul(STD).abs().mean().item() for (a, _), (b, _) in zip(got, expected, strict=True)]
    other_seed = [(a - b).mul(STD).abs().mean().item() for (a, _), (b, _) in zip(got[3:], expected[:3])]
    # roi_align's area sampling against PIL's antialiased resize: measured 0.5 to 0.8% of the pixel range
    # (tests/data/test_views.py's bound is 2%)
    assert max(errors) < 0.02 and min(other_seed) > 3 * max(errors), (errors, other_seed)


def test_resident_data_of_a_dataset_without_files_is_one_clear_line(compose_cfg):
    cfg = compose_cfg("dataset=digits", "dataset.resident=true")
    with pytest.raises(S3LError) as error:
        validate_config(cfg, stage_specs(cfg))
    assert str(error.value) == ("dataset.resident=true loads the resized-image cache of a single-label dataset read "
                                "from image files, not dataset=digits: set dataset.resident=false")
