"""The cost of a stage adds up over its attempts (a kill and a resume), through the checkpoint."""

import time
from types import SimpleNamespace

import pytest
import torch

from s3l.callbacks.cost import CostMeter


def attempt(meter: CostMeter, batches: int, batch_size: int, world_size: int = 1) -> None:
    trainer = SimpleNamespace(world_size=world_size)
    meter.on_fit_start(trainer, None)
    meter.on_train_epoch_start(trainer, None)
    for index in range(batches):
        meter.on_train_batch_start(trainer, None, None, index)
        time.sleep(0.01)
        meter.on_train_batch_end(trainer, None, None, (torch.zeros(batch_size), torch.zeros(batch_size)), index)
    meter.on_train_epoch_end(trainer, None)


def test_cost_of_a_resumed_stage_is_the_sum_of_its_attempts():
    first = CostMeter(train_flops_per_image=2e9, forward_gflops_per_image=1.0)
    attempt(first, batches=3, batch_size=8)
    saved = torch.load(_saved(first.state_dict()), weights_only=True)  # what the checkpoint carries

    second = CostMeter(train_flops_per_image=2e9, forward_gflops_per_image=1.0)
    second.load_state_dict(saved)
    attempt(second, batches=2, batch_size=8, world_size=2)
    second.on_fit_end(None, None)
    summary = second.summary()
    assert summary["attempts"] == 2
    assert summary["train_images"] == 3 * 8 + 2 * 8 * 2
    assert summary["train_pflops"] == (3 * 8 + 2 * 8 * 2) * 2e9 / 1e15
    totals = second.totals()
    second_wall = totals["wall_seconds"] - saved["wall_seconds"]
    assert saved["wall_seconds"] >= 0.03 and second_wall >= 0.02
    # device-seconds: the first attempt on 1 device, the second on 2
    assert totals["device_seconds"] == pytest.approx(saved["wall_seconds"] + 2 * second_wall)


def _saved(state: dict):
    import io
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer
