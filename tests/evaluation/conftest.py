"""Digits features of a small random ResNet, extracted once for all the evaluation tests."""

import pytest
import torch
from torch.utils.data import Subset

from s3l.data.datamodule import Transformed, loader
from s3l.data.datasets import Digits
from s3l.data.transforms import eval_transform
from s3l.evaluation.features import RESNET_STAGES, extract
from s3l.models.resnet import build_backbone

SIZE = 16


def digits_loader(split: str, count: int) -> torch.utils.data.DataLoader:
    """The first `count` digits of `split` at 16 px with the evaluation transform, 256 a batch."""
    return loader(Transformed(Subset(Digits(split, SIZE), range(count)), eval_transform(SIZE)), 256, 0)


@pytest.fixture(scope="session")
def digits_features():
    """(train features, train labels, test features, test labels) by stage: 400 train and 200 test digits."""
    torch.manual_seed(0)
    backbone = build_backbone("resnet10", "cifar")
    train, train_labels = extract(backbone, digits_loader("train", 400), "cpu", list(RESNET_STAGES))
    test, test_labels = extract(backbone, digits_loader("test", 200), "cpu", list(RESNET_STAGES))
    return train, train_labels, test, test_labels
