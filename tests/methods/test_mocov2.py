"""MoCo v2: queue, pointer, momentum update and loss checked against direct computations."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from s3l.methods.mocov2 import MoCoV2, infonce_logits
from s3l.models.batchnorm import SplitBatchNorm2d


def tiny_moco(K: int = 16, dim: int = 8, bn_splits: int = 1, m: float = 0.9) -> MoCoV2:
    torch.manual_seed(0)
    return MoCoV2(
        architecture="resnet10", stem="imagenet", dim=dim, K=K, m=m, T=0.2, mlp=True, bn_splits=bn_splits,
        lr=0.03, momentum=0.9, weight_decay=1e-4, lr_schedule="cosine_epoch",
    )


def test_queue_starts_normalised_and_key_encoder_is_a_frozen_copy():
    model = tiny_moco()
    assert model.queue.shape == (8, 16)
    assert torch.allclose(model.queue.norm(dim=0), torch.ones(16), atol=1e-6)
    assert int(model.queue_ptr) == 0
    for (name_q, p_q), (name_k, p_k) in zip(model.encoder_q.named_parameters(), model.encoder_k.named_parameters()):
        assert name_q == name_k and torch.equal(p_q, p_k)
        assert not p_k.requires_grad and p_q.requires_grad


def test_enqueue_writes_keys_as_columns_at_the_pointer():
    model = tiny_moco(K=16)
    before = model.queue.clone()
    keys = torch.randn(4, 8)
    model.dequeue_and_enqueue(keys)
    assert torch.equal(model.queue[:, 0:4], keys.T)
    assert torch.equal(model.queue[:, 4:], before[:, 4:])
    assert int(model.queue_ptr) == 4


def test_queue_wraps_around():
    model = tiny_moco(K=8)
    batches = [torch.full((4, 8), float(i)) for i in range(3)]
    pointers = []
    for keys in batches:
        model.dequeue_and_enqueue(keys)
        pointers.append(int(model.queue_ptr))
    assert pointers == [4, 0, 4]
    assert torch.equal(model.queue[:, 0:4], batches[2].T)  # third batch overwrote the oldest (first)
    assert torch.equal(model.queue[:, 4:8], batches[1].T)


def test_enqueue_refuses_a_batch_that_does_not_divide_the_queue():
    model = tiny_moco(K=16)
    with pytest.raises(RuntimeError, match="multiple of the global batch"):
        model.dequeue_and_enqueue(torch.randn(5, 8))


def test_momentum_update_matches_the_formula():
    model = tiny_moco(m=0.9)
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(torch.randn_like(p))
    q = [p.clone() for p in model.encoder_q.parameters()]
    k = [p.clone() for p in model.encoder_k.parameters()]
    buffers_k = [b.clone() for b in model.encoder_k.buffers()]
    model.momentum_update_key_encoder()
    for p_k, before_k, p_q in zip(model.encoder_k.parameters(), k, q):
        assert torch.allclose(p_k, 0.9 * before_k + 0.1 * p_q, atol=1e-6)
    for b, before in zip(model.encoder_k.buffers(), buffers_k):
        assert torch.equal(b, before)  # BN running statistics are not averaged, only parameters


def test_infonce_logits_and_loss_match_a_hand_computation():
    torch.manual_seed(1)
    q = F.normalize(torch.randn(3, 4), dim=1)
    k = F.normalize(torch.randn(3, 4), dim=1)
    queue = F.normalize(torch.randn(4, 5), dim=0)
    T = 0.2
    logits = infonce_logits(q, k, queue, T)
    assert logits.shape == (3, 6)
    loss = F.cross_entropy(logits, torch.zeros(3, dtype=torch.long))
    expected = 0.0
    for i in range(3):
        pos = math.exp(float(q[i] @ k[i]) / T)
        negs = sum(math.exp(float(q[i] @ queue[:, j]) / T) for j in range(5))
        expected += -math.log(pos / (pos + negs))
    assert loss.item() == pytest.approx(expected / 3, rel=1e-5)


def test_infonce_logits_are_float32_under_bfloat16_inputs():
    q = F.normalize(torch.randn(2, 4), dim=1).bfloat16()
    logits = infonce_logits(q, q, torch.randn(4, 8), 0.2)
    assert logits.dtype == torch.float32


def test_training_step_loss_equals_direct_moco_computation():
    model = tiny_moco(K=16)
    model.train()
    reference = copy.deepcopy(model)
    torch.manual_seed(3)
    im_q, im_k = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    queue_before = model.queue.clone()

    loss = model.training_step(([im_q, im_k], torch.zeros(4)), 0)

    with torch.no_grad():
        q = F.normalize(reference.encoder_q(im_q), dim=1)
        for p_k, p_q in zip(reference.encoder_k.parameters(), reference.encoder_q.parameters()):
            p_k.mul_(0.9).add_(p_q, alpha=0.1)
        # one BN group over the whole batch: the shuffle cannot change any sample's output
        k = F.normalize(reference.encoder_k(im_k), dim=1)
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue_before], dim=1) / 0.2
        expected = F.cross_entropy(logits, torch.zeros(4, dtype=torch.long))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    assert torch.allclose(model.queue[:, :4], k.T, atol=1e-5)  # the keys, not the queries, were enqueued
    assert int(model.queue_ptr) == 4


def test_split_batchnorm_is_used_in_both_encoders_and_queue_is_in_the_checkpoint():
    model = tiny_moco(bn_splits=2)
    assert any(isinstance(m, SplitBatchNorm2d) for m in model.encoder_q.modules())
    assert any(isinstance(m, SplitBatchNorm2d) for m in model.encoder_k.modules())
    state = model.state_dict()
    assert "queue" in state and "queue_ptr" in state
    assert any(k.startswith("encoder_k.") for k in state)


def test_logits_stay_float32_inside_bf16_autocast():
    torch.manual_seed(4)
    q = F.normalize(torch.randn(4, 8), dim=1).bfloat16()
    k = F.normalize(torch.randn(4, 8), dim=1).bfloat16()
    queue = F.normalize(torch.randn(8, 16), dim=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = infonce_logits(q, k, queue, 0.2)
        loss = F.cross_entropy(logits, torch.zeros(4, dtype=torch.long))
    expected = infonce_logits(q.float(), k.float(), queue, 0.2)
    assert logits.dtype == torch.float32 and loss.dtype == torch.float32
    assert torch.equal(logits, expected)  # bit-identical to float32: autocast did not touch the matmul


def test_bf16_training_step_keeps_the_queue_float32():
    model = tiny_moco(K=16)
    views = [torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.training_step((views, torch.zeros(4)), 0)
    assert loss.dtype == torch.float32 and model.queue.dtype == torch.float32
    assert torch.allclose(model.queue[:, :4].norm(dim=0), torch.ones(4), atol=1e-2)  # unit keys enqueued
