"""Every random draw of the data pipeline is a function of (seed, epoch, sample): the same views whatever the
workers, their number, their persistence or a resume."""

import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from s3l.data.datamodule import Transformed, loader, pretrain_transform
from s3l.data.sampling import EpochSampler, sample_seed, seeded_draws, stage_seed
from tests.data.test_views import preset


class Photos(Dataset):
    """Eight distinct 40 x 30 RGB images with labels."""

    def __init__(self, n: int = 8) -> None:
        rng = np.random.default_rng(0)
        self.images = [Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)) for _ in range(n)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], index


def two_view_set(seed: int = 7) -> Transformed:
    transform, _ = pretrain_transform(16, preset("mocov2"))
    return Transformed(Photos(), transform, seed)


def epochs_of(load: DataLoader, sampler: EpochSampler, epochs) -> list:
    batches = []
    for epoch in epochs:
        sampler.set_epoch(epoch)
        batches.append([(torch.stack([v1, v2]), labels) for (v1, v2), labels in load])
    return batches


def assert_same(a: list, b: list) -> None:
    assert len(a) == len(b)
    for epoch_a, epoch_b in zip(a, b):
        for (views_a, labels_a), (views_b, labels_b) in zip(epoch_a, epoch_b, strict=True):
            torch.testing.assert_close(labels_a, labels_b, rtol=0, atol=0)
            torch.testing.assert_close(views_a, views_b, rtol=0, atol=0)


@pytest.mark.slow
def test_views_do_not_depend_on_workers_their_number_persistence_or_a_resume():
    data = two_view_set()

    def run(num_workers: int, epochs, persistent: bool = True):
        sampler = EpochSampler(data, seed=3)
        load = (loader(data, 3, num_workers, sampler=sampler, drop_last=True) if persistent else
                DataLoader(data, batch_size=3, sampler=sampler, drop_last=True, num_workers=num_workers))
        torch.manual_seed(123)  # the main process's own stream must not matter either
        return epochs_of(load, sampler, epochs)

    in_process = run(0, range(3))
    assert_same(in_process, run(2, range(3)))                      # 2 persistent workers
    assert_same(in_process, run(1, range(3), persistent=False))    # 1 fresh worker per epoch
    assert_same(in_process[2:], run(2, [2]))                        # a run resumed at epoch 2
    # and the draws do change from epoch to epoch, and with the seed
    first, second = in_process[0][0][0], in_process[1][0][0]
    assert not torch.equal(first, second)
    other_seed = Transformed(data.dataset, data.transform, seed=8)
    assert not torch.equal(other_seed[(0, 0)][0][0], data[(0, 0)][0][0])


def test_epoch_sampler_keeps_distributed_samplers_order_and_shards():
    data = list(range(10))
    for epoch in (0, 5):
        single = EpochSampler(data, seed=4)
        single.set_epoch(epoch)
        reference = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=4)
        reference.set_epoch(epoch)
        assert list(single) == [(epoch, index) for index in reference]
    # two ranks: disjoint halves of one permutation, as DistributedSampler shards it
    shards = []
    for rank in (0, 1):
        sampler = EpochSampler(data, seed=4)
        sampler.num_replicas, sampler.rank = 2, rank
        sampler.num_samples, sampler.total_size = 5, 10
        shards.append([index for _, index in sampler])
    assert sorted(shards[0] + shards[1]) == data


def test_seeded_draws_give_the_callers_generators_back():
    torch.manual_seed(0)
    random.seed(0)
    expected_torch, expected_python = torch.rand(3), random.random()
    torch.manual_seed(0)
    random.seed(0)
    with seeded_draws(sample_seed(1, 2, 3)):
        inside = torch.rand(3), random.random()
    torch.testing.assert_close(torch.rand(3), expected_torch)
    assert random.random() == expected_python
    with seeded_draws(sample_seed(1, 2, 3)):
        assert torch.equal(torch.rand(3), inside[0]) and random.random() == inside[1]


def test_seeds_differ_between_neighbouring_samples_epochs_and_stages():
    seeds = {sample_seed(0, epoch, index) for epoch in range(20) for index in range(50)}
    assert len(seeds) == 1000
    assert stage_seed(0, "pretrain") != stage_seed(0, "finetune") != stage_seed(1, "finetune")
    assert all(0 <= seed < 2**63 for seed in seeds)
