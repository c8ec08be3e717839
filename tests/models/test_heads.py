import torch
from torch import nn

from s3l.models.heads import ProjectionHead, build_projection_head


def test_mlp_head_maps_2048_features_to_128_through_2048_hidden_units():
    head = build_projection_head(2048, 128, mlp=True)
    assert head(torch.randn(4, 2048)).shape == (4, 128)
    assert sum(p.numel() for p in head.parameters()) == 2048 * 2048 + 2048 + 2048 * 128 + 128


def test_mlp_head_is_linear_relu_linear_without_batchnorm():
    head = build_projection_head(1024, 128, mlp=True)
    assert [type(layer) for layer in head] == [nn.Linear, nn.ReLU, nn.Linear]
    assert not any(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in head.modules())
    assert list(head.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_mlp_head_computes_second_linear_of_relu_of_first():
    torch.manual_seed(0)
    head = ProjectionHead(8, 6, 3)
    x = torch.randn(5, 8)
    hidden = (x @ head[0].weight.T + head[0].bias).clamp(min=0)
    expected = hidden @ head[2].weight.T + head[2].bias
    torch.testing.assert_close(head(x), expected)


def test_without_mlp_the_head_is_one_linear_layer():
    head = build_projection_head(512, 128, mlp=False)
    assert type(head) is nn.Linear
    assert (head.in_features, head.out_features) == (512, 128)
    assert list(head.state_dict()) == ["weight", "bias"]
