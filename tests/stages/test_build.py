"""Handing the full method state from one pretraining stage to the next (multi-stage 112 -> 224)."""

import re

import pytest
import torch

from s3l.errors import S3LError
from s3l.methods.mocov2 import MoCoV2
from s3l.methods.simclr import SimCLR
from s3l.stages.pretrain import METHOD_STATE

SETTINGS = dict(architecture="resnet10", stem="imagenet", bn_splits=1, lr=0.03, momentum=0.9, weight_decay=1e-4,
                lr_schedule="cosine_epoch")


def moco(K: int) -> MoCoV2:
    return MoCoV2(dim=8, K=K, m=0.99, T=0.2, mlp=True, **SETTINGS)


def test_method_state_carries_encoders_and_queue(tmp_path):
    first = moco(K=16)
    first.queue_ptr[0] = 8
    torch.save(first.state_dict(), tmp_path / METHOD_STATE)
    second = moco(K=16)
    assert second.load_method_state(tmp_path / METHOD_STATE).startswith("full MoCoV2 state from")
    assert torch.equal(second.queue, first.queue) and int(second.queue_ptr) == 8
    assert torch.equal(second.encoder_k.backbone.conv1.weight, first.encoder_k.backbone.conv1.weight)


def test_a_queue_of_another_length_is_one_clear_error(tmp_path):
    torch.save(moco(K=16).state_dict(), tmp_path / METHOD_STATE)
    with pytest.raises(S3LError, match=r"1 shape mismatches \(queue \(8, 16\) vs \(8, 32\)\).*method.K\) must match"):
        moco(K=32).load_method_state(tmp_path / METHOD_STATE)


def test_another_methods_state_is_one_clear_error(tmp_path):
    torch.save(SimCLR(dim=8, hidden_dim=None, T=0.1, negatives="global", base_temperature=None,
                      **SETTINGS).state_dict(), tmp_path / METHOD_STATE)
    with pytest.raises(S3LError) as error:
        moco(K=16).load_method_state(tmp_path / METHOD_STATE)
    assert re.search(r"does not fit this MoCoV2 configuration: \d+ missing keys \(queue, queue_ptr, encoder_q\.",
                     str(error.value))
    assert "unexpected keys (encoder.backbone.conv1.weight" in str(error.value)
    assert "the method, the architecture" in str(error.value)
