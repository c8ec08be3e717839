"""Handing the full MoCo state from one pretraining stage to the next (multi-stage 112 -> 224)."""

import pytest
import torch

from s3l.errors import S3LError
from s3l.methods.mocov2 import MoCoV2
from s3l.stages.build import METHOD_STATE, _load_method_state


def moco(K: int) -> MoCoV2:
    return MoCoV2(architecture="resnet10", stem="imagenet", dim=8, K=K, m=0.99, T=0.2, mlp=True, bn_splits=1,
                  lr=0.03, momentum=0.9, weight_decay=1e-4, lr_schedule="cosine_epoch")


def test_method_state_carries_encoders_and_queue(tmp_path):
    first = moco(K=16)
    first.queue_ptr[0] = 8
    torch.save(first.state_dict(), tmp_path / METHOD_STATE)
    second = moco(K=16)
    _load_method_state(second, tmp_path / METHOD_STATE)
    assert torch.equal(second.queue, first.queue) and int(second.queue_ptr) == 8
    assert torch.equal(second.encoder_k.backbone.conv1.weight, first.encoder_k.backbone.conv1.weight)


def test_a_queue_of_another_length_is_one_clear_error(tmp_path):
    torch.save(moco(K=16).state_dict(), tmp_path / METHOD_STATE)
    with pytest.raises(S3LError, match=r"shape mismatches \['queue \(8, 16\) vs \(8, 32\)'\].*method.K must match"):
        _load_method_state(moco(K=32), tmp_path / METHOD_STATE)
