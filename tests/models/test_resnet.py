import pytest
import torch
import torchvision
from torch import nn

from s3l.errors import S3LError
from s3l.models.resnet import ARCHITECTURES, backbone_flops, build_backbone, full_architecture


def _on_meta(name: str, stem: str = "imagenet") -> nn.Module:
    # Shapes, parameter counts and FLOPs need no real weights; the meta device skips init and compute.
    with torch.device("meta"):
        return build_backbone(name, stem)


def _parameter_count(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def test_custom_resnet50_has_8_543_296_parameters():
    assert _parameter_count(_on_meta("custom_resnet50")) == 8_543_296


def test_resnet50_backbone_has_23_508_032_parameters():
    assert _parameter_count(_on_meta("resnet50")) == 23_508_032


@pytest.mark.parametrize(
    ("name", "feature_dim"),
    [
        ("resnet10", 512),
        ("resnet18", 512),
        ("resnet50", 2048),
        ("custom_resnet18", 256),
        ("custom_resnet50", 1024),
    ],
)
def test_backbone_outputs_feature_dim_features(name, feature_dim):
    backbone = _on_meta(name)
    assert backbone.feature_dim == feature_dim
    assert backbone(torch.empty(2, 3, 64, 64, device="meta")).shape == (2, feature_dim)


def test_custom_resnet50_outputs_1024_features_at_56_and_112_px():
    torch.manual_seed(0)
    backbone = build_backbone("custom_resnet50").eval()
    for resolution in (56, 112):
        with torch.no_grad():
            features = backbone(torch.randn(1, 3, resolution, resolution))
        assert features.shape == (1, 1024)
        assert torch.isfinite(features).all()


def test_resnet50_state_dict_keys_are_torchvision_keys_without_fc():
    with torch.device("meta"):
        reference = torchvision.models.resnet50()
    expected = [key for key in reference.state_dict() if not key.startswith("fc.")]
    assert list(_on_meta("resnet50").state_dict()) == expected


def test_custom_resnet50_state_dict_is_resnet50_without_layer4():
    resnet50_keys = list(_on_meta("resnet50").state_dict())
    expected = [key for key in resnet50_keys if not key.startswith("layer4.")]
    assert list(_on_meta("custom_resnet50").state_dict()) == expected


def test_cifar_stem_keeps_spatial_size_after_conv1():
    backbone = _on_meta("resnet18", stem="cifar")
    stem_output = backbone.maxpool(backbone.conv1(torch.empty(2, 3, 32, 32, device="meta")))
    assert stem_output.shape == (2, 64, 32, 32)
    assert backbone.conv1.bias is None


def test_imagenet_stem_quarters_spatial_size():
    backbone = _on_meta("resnet18")
    stem_output = backbone.maxpool(backbone.conv1(torch.empty(2, 3, 32, 32, device="meta")))
    assert stem_output.shape == (2, 64, 8, 8)


def test_unknown_architecture_error_lists_names():
    with pytest.raises(S3LError) as error:
        build_backbone("resnet51")
    assert "resnet51" in str(error.value)
    for name in ARCHITECTURES:
        assert name in str(error.value)


def test_unknown_stem_error_lists_stems():
    with pytest.raises(S3LError, match="imagenet, cifar"):
        build_backbone("resnet18", stem="tiny")


@pytest.mark.parametrize(
    ("name", "full"),
    [
        ("custom_resnet50", "resnet50"),
        ("custom_resnet18", "resnet18"),
        ("resnet50", "resnet50"),
        ("resnet10", "resnet10"),
    ],
)
def test_full_architecture_grows_custom_nets_back_their_conv5(name, full):
    assert full_architecture(name) == full


@pytest.mark.parametrize(
    ("name", "resolution", "gmacs"),
    [
        ("resnet50", 224, 4.09),
        ("custom_resnet50", 224, 3.28),
        ("resnet50", 112, 1.08),
        ("custom_resnet50", 112, 0.82),
    ],
)
def test_backbone_flops_match_published_macs(name, resolution, gmacs):
    # FlopCounterMode counts a multiply-accumulate as 2 FLOPs.
    assert backbone_flops(_on_meta(name), resolution) == pytest.approx(2 * gmacs * 1e9, rel=0.03)


def test_backbone_flops_keeps_training_mode():
    backbone = _on_meta("resnet10").train()
    backbone_flops(backbone, 32)
    assert backbone.training
