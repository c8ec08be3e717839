import logging

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from s3l.errors import S3LError
from s3l.evaluation.features import RESNET_STAGES, extract, stage_names
from s3l.models.resnet import build_backbone
from tests.evaluation.conftest import digits_loader


def test_every_stage_of_resnet10_has_its_width_and_one_row_per_image(digits_features):
    train, train_labels, test, test_labels = digits_features
    assert list(train) == list(RESNET_STAGES)
    assert {stage: tuple(value.shape) for stage, value in train.items()} == {
        "conv2": (400, 64), "conv3": (400, 128), "conv4": (400, 256), "conv5": (400, 512),
    }
    assert all(value.dtype == torch.float32 and value.shape[0] == 200 for value in test.values())
    assert train_labels.dtype == torch.int64 and train_labels.shape == (400,)
    assert sorted(train_labels.unique().tolist()) == list(range(10))


def test_a_custom_net_has_no_conv5_and_its_final_features_are_its_conv4():
    torch.manual_seed(0)
    backbone = build_backbone("custom_resnet18", "cifar")
    assert stage_names(backbone) == ["conv2", "conv3", "conv4"]
    final, _ = extract(backbone, digits_loader("test", 20), "cpu")
    conv4, _ = extract(backbone, digits_loader("test", 20), "cpu", ["conv4"])
    assert list(final) == ["final"] and list(conv4) == ["conv4"]
    torch.testing.assert_close(final["final"], conv4["conv4"])
    with pytest.raises(S3LError, match=r"cannot extract stages \['conv5'\]: choose one or more of conv2, conv3, conv4"):
        extract(backbone, digits_loader("test", 20), "cpu", ["conv5"])


def test_stage_features_equal_a_manual_forward_in_eval_mode_and_the_mode_is_restored(caplog):
    torch.manual_seed(0)
    backbone = build_backbone("resnet10", "cifar")
    backbone.train()
    images, labels = next(iter(digits_loader("test", 30)))
    with caplog.at_level(logging.INFO, logger="s3l"):
        features, got_labels = extract(backbone, digits_loader("test", 30), "cpu", ["conv3", "conv5"])
    assert backbone.training and all(module.training for module in backbone.modules())
    assert "images/s" in caplog.text
    backbone.eval()
    with torch.no_grad():
        x = backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(images))))
        conv3 = backbone.layer2(backbone.layer1(x))
        conv5 = backbone.layer4(backbone.layer3(conv3))
    torch.testing.assert_close(features["conv3"], conv3.mean(dim=(2, 3)))
    torch.testing.assert_close(features["conv5"], conv5.mean(dim=(2, 3)))
    assert torch.equal(got_labels, labels)


def test_multilabel_targets_come_back_as_given():
    torch.manual_seed(0)
    targets = torch.randint(0, 2, (12, 5), dtype=torch.int8)
    loader = DataLoader(TensorDataset(torch.randn(12, 3, 16, 16), targets), batch_size=5)
    features, labels = extract(build_backbone("resnet10", "cifar"), loader, "cpu")
    assert features["final"].shape == (12, 512)
    assert labels.dtype == torch.int8 and torch.equal(labels, targets)
