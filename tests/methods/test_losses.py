"""Each SSL loss against a direct computation on a hand-built batch."""

import math

import pytest
import torch
import torch.nn.functional as F

from s3l.methods.losses import byol_loss, negative_cosine, nt_xent


def direct_nt_xent(z1: torch.Tensor, z2: torch.Tensor, T: float) -> float:
    """The SimCLR paper's loss, one anchor at a time: view k of image i against all 2N - 1 other views."""
    views = [F.normalize(v, dim=0) for v in torch.cat([z1, z2])]
    n = z1.shape[0]
    total = 0.0
    for i, anchor in enumerate(views):
        partner = (i + n) % (2 * n)  # the positive: the other view of the same image
        sims = {j: math.exp(float(anchor @ other) / T) for j, other in enumerate(views) if j != i}
        total += -math.log(sims[partner] / sum(sims.values()))
    return total / (2 * n)


def test_nt_xent_has_its_positive_at_the_offset_diagonal_and_divides_by_the_temperature():
    torch.manual_seed(0)
    z1, z2 = torch.randn(4, 6), torch.randn(4, 6)
    for T in (0.1, 0.5):
        assert nt_xent(z1, z2, T).item() == pytest.approx(direct_nt_xent(z1, z2, T), rel=1e-5)


def test_nt_xent_is_near_zero_when_each_view_matches_only_its_partner():
    z = torch.eye(4) * 10
    assert nt_xent(z, z.clone(), 0.05).item() < 1e-6


def test_nt_xent_scale_multiplies_the_loss_like_upstreams_supcon_base_temperature():
    torch.manual_seed(1)
    z1, z2 = torch.randn(3, 5), torch.randn(3, 5)
    plain = nt_xent(z1, z2, 0.1)
    assert nt_xent(z1, z2, 0.1, loss_scale=0.1 / 0.07).item() == pytest.approx(plain.item() * 0.1 / 0.07)
    assert nt_xent(z1, z2, 0.1, negatives="local").item() == pytest.approx(plain.item())  # one process


def test_byol_loss_is_two_minus_two_cosine_and_symmetric_sum_is_the_mean_of_both_terms():
    torch.manual_seed(2)
    p1, p2, t1, t2 = (torch.randn(5, 8) for _ in range(4))
    direct = [2 - 2 * float(a @ b) / (float(a.norm()) * float(b.norm())) for a, b in zip(p1, t2)]
    assert byol_loss(p1, t2).item() == pytest.approx(sum(direct) / 5, rel=1e-5)
    squared = ((F.normalize(p1, dim=1) - F.normalize(t2, dim=1)) ** 2).sum(1).mean()
    assert byol_loss(p1, t2).item() == pytest.approx(squared.item(), rel=1e-5)
    assert byol_loss(p1, p1).item() == pytest.approx(0.0, abs=1e-6)


def test_negative_cosine_value_and_its_stop_gradient():
    torch.manual_seed(3)
    p = torch.randn(4, 6, requires_grad=True)
    z = torch.randn(4, 6, requires_grad=True)
    loss = negative_cosine(p, z)
    direct = -sum(float(a @ b) / (float(a.norm()) * float(b.norm())) for a, b in zip(p, z)) / 4
    assert loss.item() == pytest.approx(direct, rel=1e-5)
    loss.backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    assert z.grad is None  # the target branch receives no gradient


def test_byol_loss_sends_no_gradient_to_the_target_projection():
    p = torch.randn(3, 4, requires_grad=True)
    z = torch.randn(3, 4, requires_grad=True)
    byol_loss(p, z).backward()
    assert p.grad is not None and z.grad is None


def test_losses_are_float32_under_bf16_inputs():
    z = torch.randn(4, 8).bfloat16()
    for value in (nt_xent(z, z, 0.1), negative_cosine(z, z), byol_loss(z, z)):
        assert value.dtype == torch.float32
