import pytest
import torch
from torch import nn

from s3l.models.heads import mlp_head


def test_moco_v2_head_maps_2048_features_to_128_through_2048_hidden_units():
    head = mlp_head(2048, None, 128, layers=2, batch_norm=False)
    assert head(torch.randn(4, 2048)).shape == (4, 128)
    assert sum(p.numel() for p in head.parameters()) == 2048 * 2048 + 2048 + 2048 * 128 + 128


def test_moco_v2_head_is_linear_relu_linear_without_batchnorm_with_the_upstream_keys():
    head = mlp_head(1024, None, 128, layers=2, batch_norm=False)
    assert [type(layer) for layer in head] == [nn.Linear, nn.ReLU, nn.Linear]
    assert not any(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in head.modules())
    assert list(head.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_two_layer_head_computes_second_linear_of_relu_of_first():
    torch.manual_seed(0)
    head = mlp_head(8, 6, 3, layers=2, batch_norm=False)
    x = torch.randn(5, 8)
    hidden = (x @ head[0].weight.T + head[0].bias).clamp(min=0)
    expected = hidden @ head[2].weight.T + head[2].bias
    torch.testing.assert_close(head(x), expected)


def test_one_layer_is_moco_v1s_linear_head():
    head = mlp_head(512, None, 128, layers=1, batch_norm=False)
    assert type(head) is nn.Linear and (head.in_features, head.out_features) == (512, 128)


def test_byol_projector_normalises_its_hidden_layer_in_training():
    torch.manual_seed(0)
    head = mlp_head(8, 16, 4, layers=2, batch_norm=True)
    assert [type(layer) for layer in head] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert head[0].bias is None and head[3].bias is not None  # BN makes the hidden bias redundant
    x = torch.randn(32, 8)
    hidden = head[0](x)
    normalised = (hidden - hidden.mean(0)) / torch.sqrt(hidden.var(0, unbiased=False) + 1e-5)
    expected = head[3](normalised.clamp(min=0))
    torch.testing.assert_close(head(x), expected, atol=1e-5, rtol=1e-4)


def test_simsiam_projector_has_three_layers_and_an_output_batchnorm_without_affine():
    head = mlp_head(32, 64, 64, layers=3, batch_norm=True, last_batch_norm=True)
    kinds = [type(layer) for layer in head]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear,
                     nn.BatchNorm1d]
    assert head[-1].affine is False and head[-2].bias is None
    out = head(torch.randn(16, 32))
    torch.testing.assert_close(out.mean(0), torch.zeros(64), atol=1e-5, rtol=0)


def test_a_head_needs_a_layer():
    with pytest.raises(ValueError, match="at least one layer"):
        mlp_head(8, 8, 8, layers=0, batch_norm=False)
