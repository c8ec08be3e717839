"""Nothing lost: atomic checkpoint writes, the NaN guard, RNG states, run-directory locks, reused results,
resume points that fall back past unreadable checkpoints and refuse changed settings."""

import json
import multiprocessing
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.fabric.plugins.io import torch_io

from s3l.callbacks.checkpointing import AtomicCheckpointIO, NonFiniteLossGuard, RNGStateCheckpoint
from s3l.config import StageSpec, check_group_options
from s3l.errors import S3LError
from s3l.resume import find_resume_point, last_checkpoint
from s3l.rundir import check_same_config, claim
from tests.conftest import CONFIGS, ROOT, is_whole_zombie


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


def test_each_save_keeps_the_checkpoint_it_replaces(tmp_path):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    for epoch in (1, 2, 3):
        io.save_checkpoint({"epoch": epoch}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 3
    assert torch.load(tmp_path / "last.previous.ckpt", weights_only=True)["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "last.previous.ckpt"]


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
    assert check_group_options(["method=simclr2"], CONFIGS) == (
        "unknown method option 'simclr2': choose one of byol, mocov2, simclr, simsiam")
    assert "choose one of 16, 32, 56, 112, 224" in check_group_options(["resolution=56,100"], CONFIGS)
    assert check_group_options(["resolution=56,112", "stage=finetune", "method.K=64"], CONFIGS) is None


def test_unknown_group_option_from_the_command_line_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, "train.py", "architecture=resnet152"], cwd=CONFIGS.parent,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: unknown architecture option 'resnet152': choose one of resnet10, resnet18, resnet50, "
        "custom_resnet18, custom_resnet50")


def _claim_and_hold(run_dir: str, barrier, results) -> None:
    """A claimant process: wait for all, claim, report, hold the lock until every claimant reported."""
    barrier.wait()
    try:
        claim(Path(run_dir))
        results.put(("won", os.getpid()))
    except S3LError as error:
        results.put(("lost", str(error)))
    barrier.wait()


def test_simultaneous_claims_have_exactly_one_winner_every_time(tmp_path):
    context = multiprocessing.get_context("fork")
    for round_ in range(5):
        run_dir = tmp_path / f"run{round_}"
        barrier, results = context.Barrier(6), context.Queue()
        claimants = [context.Process(target=_claim_and_hold, args=(str(run_dir), barrier, results))
                     for _ in range(6)]
        for claimant in claimants:
            claimant.start()
        outcomes = [results.get(timeout=60) for _ in claimants]
        for claimant in claimants:
            claimant.join(timeout=60)
        winners = [detail for outcome, detail in outcomes if outcome == "won"]
        assert len(winners) == 1, outcomes
        for outcome, detail in outcomes:
            if outcome == "lost":
                assert f"another run (host {socket.gethostname()}, pid {winners[0]}) is writing into" in detail


def test_a_killed_run_that_nobody_reaps_leaves_the_directory_free(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from s3l.rundir import claim; "
        f"claim(Path({str(tmp_path)!r})); print('claimed', flush=True); time.sleep(60)")],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "claimed"
        with pytest.raises(S3LError, match=f"pid {holder.pid}\\) is writing into"):
            claim(tmp_path)
        os.kill(holder.pid, signal.SIGKILL)
        deadline = time.time() + 10
        while not is_whole_zombie(holder.pid):  # dead, its pid still taken, never reaped
            assert time.time() < deadline
            time.sleep(0.01)
        lock = claim(tmp_path)  # at once: the kernel released the dead process's lock
        assert (tmp_path / "run.lock").read_text().strip() == f"host {socket.gethostname()}, pid {os.getpid()}"
        lock.release()
    finally:
        holder.kill()
        holder.wait()


def test_a_claimed_directory_loses_what_killed_atomic_writes_left(tmp_path):
    checkpoints = tmp_path / "0_pretrain" / "checkpoints"
    checkpoints.mkdir(parents=True)
    strays = [checkpoints / ".last.ckpt.k2j3.tmp", tmp_path / ".results.json.x9.tmp",
              tmp_path / "0_pretrain" / ".backbone.pt.ab.tmp"]
    for stray in strays:
        stray.write_bytes(b"half")
    (checkpoints / "last.ckpt").write_bytes(b"kept")
    claim(tmp_path).release()
    assert not any(stray.exists() for stray in strays)
    assert (checkpoints / "last.ckpt").read_bytes() == b"kept"


def test_an_output_directory_that_cannot_be_written_is_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(S3LError, match="cannot write into the run directory .*set paths.log_dir to a writable"):
        claim(blocker / "run")


def test_finished_stage_made_with_another_config_is_not_reused_and_the_change_is_named(tmp_path):
    before = {"stage": {"lr": 0.1}, "method": {"m": 0.99}}
    (tmp_path / "results.json").write_text(json.dumps({"config_hash": "aaa", "config": before}))
    check_same_config(tmp_path, "stages.pretrain", before, "aaa")
    with pytest.raises(S3LError) as error:
        check_same_config(tmp_path, "stages.pretrain", {"stage": {"lr": 0.2}, "method": {"m": 0.99}}, "bbb")
    assert "different configuration (stages.pretrain.lr 0.1 -> 0.2)" in str(error.value)


SPEC = StageSpec("pretrain", "stages.pretrain", None)
IDENTITY = {"stage": {"architecture": "resnet18", "lr": 0.03}, "method": {"m": 0.99}}


def write_checkpoint(path: Path, epoch: int, identity: dict = IDENTITY) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": epoch, "global_step": 10 * epoch, "loops": {},
                "s3l": {"identity": identity, "metrics": {}, "pending_row": None}}, path)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("corrupt", ["zero bytes", "not a checkpoint", "refused pickle", "a plain tensor"])
def test_an_unreadable_last_checkpoint_falls_back_to_the_previous_one(tmp_path, corrupt):
    last = last_checkpoint(tmp_path)
    write_checkpoint(last.with_name("last.previous.ckpt"), epoch=2)
    last.write_bytes({"zero bytes": b"", "not a checkpoint": b"hello"}.get(corrupt, b""))
    if corrupt == "refused pickle":
        torch.save({"state_dict": Evil()}, last)
    if corrupt == "a plain tensor":
        torch.save(torch.ones(3), last)
    os.utime(last, (time.time() + 5, time.time() + 5))  # newer than the previous one
    point = find_resume_point(tmp_path, SPEC, IDENTITY)
    assert point.path.name == "last.previous.ckpt" and (point.epoch, point.step) == (2, 20)
    assert not last.exists() and last.with_name("last.ckpt.unreadable").is_file()


def test_an_unreadable_checkpoint_without_an_earlier_one_stops_with_one_line_naming_it(tmp_path):
    last = last_checkpoint(tmp_path)
    last.parent.mkdir(parents=True)
    last.write_bytes(b"")
    with pytest.raises(S3LError) as error:
        find_resume_point(tmp_path, SPEC, IDENTITY)
    message = str(error.value)
    assert f"cannot resume stages.pretrain: checkpoint {last} is unreadable" in message
    assert "delete" in message and "resume=false" in message and "\n" not in message


def test_a_checkpoint_written_with_other_settings_is_never_resumed(tmp_path):
    write_checkpoint(last_checkpoint(tmp_path), epoch=1)
    now = {"stage": {"architecture": "resnet50", "lr": 0.03}, "method": {"m": 0.9}}
    with pytest.raises(S3LError) as error:
        find_resume_point(tmp_path, SPEC, now)
    message = str(error.value)
    assert "stages.pretrain.architecture resnet18 -> resnet50, method.m 0.99 -> 0.9" in message
    assert "resume=false" in message
    assert find_resume_point(tmp_path, SPEC, IDENTITY).epoch == 1


def test_no_checkpoint_is_a_fresh_start(tmp_path):
    assert find_resume_point(tmp_path, SPEC, IDENTITY) is None


def test_the_guard_reads_the_loss_every_n_steps_but_names_the_first_bad_one_and_blocks_checkpoints(tmp_path):
    guard = NonFiniteLossGuard(tmp_path / "last.ckpt", check_every_n_steps=5)
    trainer = SimpleNamespace(current_epoch=0, global_step=0)

    def step(loss: float) -> None:
        trainer.global_step += 1
        guard.on_train_batch_end(trainer, None, {"loss": torch.tensor(loss)}, None, 0)

    for loss in (1.0, 0.9, float("inf")):  # steps 1-3: recorded on the device, not read yet
        step(loss)
    step(float("nan"))  # step 4: not the first any more
    with pytest.raises(S3LError) as before_save:
        guard.on_save_checkpoint(trainer, None, {})  # a checkpoint of these weights is never written
    assert "non-finite loss (inf) at epoch 0, step 3" in str(before_save.value)
    with pytest.raises(S3LError, match="step 3"):
        step(1.0)  # step 5: the periodic read
    with pytest.raises(S3LError, match="step 3"):
        guard.on_train_end(trainer, None)
    finite = NonFiniteLossGuard(tmp_path / "last.ckpt", check_every_n_steps=5)
    finite.on_train_batch_end(trainer, None, {"loss": torch.tensor(2.0)}, None, 0)
    finite.on_save_checkpoint(trainer, None, {})
    finite.on_train_end(trainer, None)  # nothing recorded: nothing raised
