import pytest
import torch
import torch.nn.functional as F
from torch import nn

from s3l.errors import S3LError
from s3l.models.batchnorm import SplitBatchNorm2d, convert_to_split_batchnorm
from s3l.models.resnet import build_backbone


def _split_bn_with_random_state(channels: int, num_splits: int) -> SplitBatchNorm2d:
    bn = SplitBatchNorm2d(channels, num_splits)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-1.0, 1.0)
        bn.running_var.uniform_(0.5, 2.0)
    return bn


def test_training_output_normalises_each_chunk_with_its_own_statistics():
    torch.manual_seed(0)
    bn = _split_bn_with_random_state(3, num_splits=4).train()
    x = torch.randn(8, 3, 5, 5) * 3 + torch.arange(8.0).view(8, 1, 1, 1)
    expected = torch.cat(
        [F.batch_norm(chunk, None, None, bn.weight, bn.bias, training=True) for chunk in x.chunk(4)]
    )
    torch.testing.assert_close(bn(x), expected, atol=1e-5, rtol=0)


def test_running_statistics_average_the_per_chunk_updates():
    torch.manual_seed(0)
    bn = _split_bn_with_random_state(3, num_splits=2).train()
    mean_before, var_before = bn.running_mean.clone(), bn.running_var.clone()
    x = torch.randn(6, 3, 4, 4) + torch.tensor([0.0, 0.0, 0.0, 5.0, 5.0, 5.0]).view(6, 1, 1, 1)
    bn(x)
    m = bn.momentum
    chunks = x.chunk(2)
    expected_mean = sum((1 - m) * mean_before + m * c.mean(dim=(0, 2, 3)) for c in chunks) / 2
    expected_var = sum((1 - m) * var_before + m * c.var(dim=(0, 2, 3), unbiased=True) for c in chunks) / 2
    torch.testing.assert_close(bn.running_mean, expected_mean)
    torch.testing.assert_close(bn.running_var, expected_var)
    assert bn.num_batches_tracked.item() == 1


def test_eval_output_equals_plain_batchnorm():
    torch.manual_seed(0)
    split = _split_bn_with_random_state(3, num_splits=2).eval()
    plain = nn.BatchNorm2d(3).eval()
    plain.load_state_dict(split.state_dict())
    x = torch.randn(3, 3, 4, 4)  # odd batch: eval mode does not split
    torch.testing.assert_close(split(x), plain(x))


def test_state_dict_keys_equal_batchnorm2d_keys():
    assert list(SplitBatchNorm2d(16, num_splits=4).state_dict()) == list(nn.BatchNorm2d(16).state_dict())


def test_batch_not_divisible_by_splits_is_rejected_with_both_numbers():
    bn = SplitBatchNorm2d(3, num_splits=4).train()
    with pytest.raises(S3LError, match=r"batch of 6 into 4"):
        bn(torch.randn(6, 3, 2, 2))


def test_gradients_match_per_chunk_batchnorm():
    torch.manual_seed(0)
    bn = _split_bn_with_random_state(3, num_splits=2).train()
    x = torch.randn(4, 3, 3, 3, requires_grad=True)
    upstream = torch.randn(4, 3, 3, 3)
    (bn(x) * upstream).sum().backward()

    x_ref = x.detach().clone().requires_grad_(True)
    weight = bn.weight.detach().clone().requires_grad_(True)
    bias = bn.bias.detach().clone().requires_grad_(True)
    reference = torch.cat([F.batch_norm(c, None, None, weight, bias, training=True) for c in x_ref.chunk(2)])
    (reference * upstream).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(bn.weight.grad, weight.grad)
    torch.testing.assert_close(bn.bias.grad, bias.grad)


def test_converting_resnet18_replaces_all_20_batchnorms_and_keeps_their_state():
    torch.manual_seed(0)
    backbone = build_backbone("resnet18")
    for module in backbone.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1.0, 1.0)
    state_before = {key: value.clone() for key, value in backbone.state_dict().items()}
    converted = convert_to_split_batchnorm(backbone, num_splits=2)
    batchnorms = [m for m in converted.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(batchnorms) == 20
    assert all(type(m) is SplitBatchNorm2d and m.num_splits == 2 for m in batchnorms)
    state_after = converted.state_dict()
    assert list(state_after) == list(state_before)
    for key, value in state_before.items():
        assert torch.equal(state_after[key], value), key


def test_converting_with_one_split_returns_the_module_unchanged():
    backbone = build_backbone("resnet10")
    assert convert_to_split_batchnorm(backbone, num_splits=1) is backbone
    assert not any(isinstance(m, SplitBatchNorm2d) for m in backbone.modules())
