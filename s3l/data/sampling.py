"""Which images an epoch visits, in which order, and the random draws of each image's augmentation.

Every random number of the data pipeline is a function of (seed, epoch, sample): an epoch's order comes from
(seed, epoch) exactly as torch's DistributedSampler draws it, and the augmentation of one image from
(seed, epoch, index). Nothing depends on which worker process handles an image or on what that process did
before, so persistent workers, any number of workers and a resumed run all see the same views.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from s3l.distributed import world


def stage_seed(seed: int, stage: str) -> int:
    """The data seed of one stage of a chain: the run's seed mixed with the stage's name."""
    return int(np.random.SeedSequence([seed, zlib.crc32(stage.encode())]).generate_state(1, np.uint64)[0] >> 1)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one image's augmentation in one epoch (63 bits, well mixed: neighbours are unrelated)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0] >> 1)


@contextmanager
def seeded_draws(seed: int) -> Iterator[None]:
    """Run the block with torch's CPU generator and Python's `random` seeded (the two sources the views draw
    from), and give the caller's generator states back afterwards (the main process keeps its own stream when
    it augments, with num_workers=0)."""
    python_state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # not torch.manual_seed: that would reseed CUDA's too
        random.seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)


class EpochSampler(DistributedSampler):
    """DistributedSampler's order and sharding (each rank its slice of a permutation drawn from seed + epoch),
    yielding `(epoch, index)` so that the dataset can seed each image's augmentation from them.

    Lightning keeps a loader's sampler when it is already a DistributedSampler, and calls `set_epoch` on it
    before every epoch; the workers learn the epoch from the keys, so they can persist across epochs.
    """

    def __init__(self, dataset: Dataset, seed: int, shuffle: bool = True) -> None:
        rank, world_size = world()
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return ((epoch, index) for index in super().__iter__())
