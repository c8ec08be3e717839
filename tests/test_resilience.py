"""Nothing lost: atomic checkpoint writes, the NaN guard, RNG states, run-directory locks, reused results."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.fabric.plugins.io import torch_io

from s3l.callbacks.checkpointing import AtomicCheckpointIO, NonFiniteLossGuard, RNGStateCheckpoint
from s3l.config import check_group_options
from s3l.errors import S3LError
from s3l.rundir import check_same_config, claim, release
from tests.conftest import CONFIGS


def crash_midway(checkpoint, filepath):
    """Lightning's writer dying after some bytes reached the file (a kill during the save)."""
    Path(filepath).write_bytes(b"half a checkpoint")
    raise KeyboardInterrupt("killed during save")


def test_a_save_killed_midway_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "weights": torch.ones(3)}, path)
    monkeypatch.setattr(torch_io, "_atomic_save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"epoch": 2, "weights": torch.zeros(3)}, path)
    monkeypatch.undo()
    state = torch.load(path, weights_only=True)
    assert state["epoch"] == 1 and torch.equal(state["weights"], torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_lightnings_plain_writer_would_have_corrupted_it(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    torch_io.TorchCheckpointIO().save_checkpoint({"epoch": 1}, path)
    monkeypatch.setattr(torch_io, "_atomic_save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        torch_io.TorchCheckpointIO().save_checkpoint({"epoch": 2}, path)
    assert path.read_bytes() == b"half a checkpoint"  # why AtomicCheckpointIO exists


def test_non_finite_loss_stops_with_step_and_last_good_checkpoint(tmp_path):
    last = tmp_path / "last.ckpt"
    last.write_bytes(b"good")
    guard = NonFiniteLossGuard(last)
    trainer = SimpleNamespace(current_epoch=3, global_step=42)
    guard.on_train_batch_end(trainer, None, {"loss": torch.tensor(1.5)}, None, 0)  # finite: nothing happens
    with pytest.raises(S3LError) as error:
        guard.on_train_batch_end(trainer, None, {"loss": torch.tensor(float("nan"))}, None, 0)
    message = str(error.value)
    assert "non-finite loss (nan) at epoch 3, step 42" in message
    assert f"the last good checkpoint {last} is kept intact" in message
    assert last.read_bytes() == b"good"


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    callback = RNGStateCheckpoint()
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    torch.save({"callbacks": {"rng": callback.state_dict()}}, tmp_path / "c.ckpt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    callback.load_state_dict(torch.load(tmp_path / "c.ckpt", weights_only=True)["callbacks"]["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_unknown_group_option_is_one_line_listing_the_valid_ones():
    assert check_group_options(["method=simclr"], CONFIGS) == "unknown method option 'simclr': choose one of mocov2"
    assert "choose one of 16, 32, 56, 112, 224" in check_group_options(["resolution=56,100"], CONFIGS)
    assert check_group_options(["resolution=56,112", "stage=finetune", "method.K=64"], CONFIGS) is None


def test_unknown_group_option_from_the_command_line_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, "train.py", "architecture=resnet152"], cwd=CONFIGS.parent,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: unknown architecture option 'resnet152': choose one of resnet10, resnet18, resnet50, "
        "custom_resnet18, custom_resnet50")


def test_two_live_runs_never_share_a_directory(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / "run.lock").write_text(str(sleeper.pid))
        with pytest.raises(S3LError, match=f"another run \\(pid {sleeper.pid}\\) is writing into"):
            claim(tmp_path)
    finally:
        sleeper.kill()
        sleeper.wait()
    claim(tmp_path)  # the lock of a dead run is taken over
    assert (tmp_path / "run.lock").read_text() == str(os.getpid())
    release(tmp_path)
    assert not (tmp_path / "run.lock").exists()


def test_finished_stage_made_with_another_config_is_not_reused(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"config_hash": "aaa"}))
    check_same_config(tmp_path, "stages.pretrain", "aaa")
    with pytest.raises(S3LError, match="different configuration \\(config hash aaa, now bbb\\)"):
        check_same_config(tmp_path, "stages.pretrain", "bbb")
