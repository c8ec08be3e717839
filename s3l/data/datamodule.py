"""The data of one stage: datasets built once, wrapped with the stage's transforms, split over devices."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from s3l.data.cache import collate_normalized, fast_view_transform
from s3l.data.device_augment import RawViewsCollate, RawViewsTransform, realize_views
from s3l.data.sampling import EpochSampler, sample_seed, seeded_draws
from s3l.data.transforms import (
    MultiViewTransform,
    finetune_train_transform,
    random_resized_crop_train_transform,
    view_transform,
)
from s3l.data.views import ViewSpec


class Transformed(Dataset):
    """A (PIL image, label) dataset seen through a transform.

    Indexed by `(epoch, index)` (what `EpochSampler` yields), the transform's random draws are seeded from
    (seed, epoch, index); indexed by a plain index, it draws from the process's own generators.
    """

    def __init__(self, dataset: Dataset, transform: Callable, seed: int = 0) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]):
        if isinstance(key, tuple):
            epoch, index = key
            image, label = self.dataset[index]
            with seeded_draws(sample_seed(self.seed, epoch, index)):
                return self.transform(image), label
        image, label = self.dataset[key]
        return self.transform(image), label


AUGMENT_ON = ("workers", "device")


def pretrain_transform(
    resolution: int, views: tuple[ViewSpec, ViewSpec], fast: bool = False, augment_on: str = "workers"
) -> tuple[Callable, Callable | None]:
    """(transform, collate_fn) making the two views (query, key), each from its own `ViewSpec`, at the
    pretraining resolution.

    augment_on="workers": each DataLoader worker augments image by image on PIL images (upstream); `fast`
    yields uint8 tensors (same draws, same pixels) for `collate_normalized` to normalise per batch.
    augment_on="device": workers only draw the views' parameters; `StageDataModule.on_after_batch_transfer`
    augments whole batches on the training device (`s3l.data.device_augment`).
    """
    if augment_on == "device":
        return RawViewsTransform(views), RawViewsCollate(resolution)
    if fast:
        return MultiViewTransform([fast_view_transform(resolution, spec) for spec in views]), collate_normalized
    return MultiViewTransform([view_transform(resolution, spec) for spec in views]), None


def classify_train_transform(resolution: int, train_crop: str) -> Callable:
    """The supervised stages' training transform (upstream main.py)."""
    if train_crop == "random_resized_crop":
        return random_resized_crop_train_transform(resolution)
    return finetune_train_transform(resolution)


class StageDataModule(L.LightningDataModule):
    """The train loader of one stage. `global_batch_size` is split evenly over the devices.

    Its workers persist across epochs (no start-up cost per epoch, which dominates the short epochs of small
    datasets): the order and the augmentations are seeded from (seed, epoch, sample) by `EpochSampler`, so
    they do not depend on the workers' history, their number, or a resume.
    It has no `val_dataloader` (pretraining validates nothing; `ClassifyDataModule` adds the test split), so
    Lightning has no validation loader to warn about.
    """

    def __init__(
        self,
        train: Dataset,
        train_transform: Callable,
        global_batch_size: int,
        num_workers: int,
        drop_last: bool,
        collate_fn: Callable | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.train_set = Transformed(train, train_transform, seed)
        self.global_batch_size = global_batch_size
        self.num_workers = num_workers
        self.drop_last = drop_last
        self.collate_fn = collate_fn
        self.seed = seed

    def _per_device_batch(self) -> int:
        world = self.trainer.world_size if self.trainer is not None else 1
        return self.global_batch_size // world

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        # Batches of augment_on=device are augmented here, on the device; all others pass unchanged.
        return realize_views(batch)

    def train_dataloader(self) -> DataLoader:
        return loader(self.train_set, self._per_device_batch(), self.num_workers,
                      sampler=EpochSampler(self.train_set, self.seed), drop_last=self.drop_last,
                      collate_fn=self.collate_fn)


class ClassifyDataModule(StageDataModule):
    """Train and test loaders of a supervised stage (validated on the test split every epoch, as upstream)."""

    def __init__(self, train: Dataset, train_transform: Callable, global_batch_size: int, num_workers: int,
                 test: Dataset, test_transform: Callable, seed: int = 0) -> None:
        super().__init__(train, train_transform, global_batch_size, num_workers, drop_last=False, seed=seed)
        self.test_set = Transformed(test, test_transform)

    def val_dataloader(self) -> DataLoader:
        return loader(self.test_set, self._per_device_batch(), self.num_workers)


def loader(dataset: Dataset, batch_size: int, num_workers: int, sampler=None, drop_last: bool = False,
           collate_fn: Callable | None = None) -> DataLoader:
    """A DataLoader whose workers, if any, live as long as it does."""
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                      num_workers=num_workers, collate_fn=collate_fn, pin_memory=torch.cuda.is_available(),
                      persistent_workers=num_workers > 0)
