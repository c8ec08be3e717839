"""Kill a run with SIGKILL, start the same command again: it resumes and ends with the same metrics as a run
that was never interrupted. Also the bad-input cases a user meets, each with its one-line message."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import HYMENOPTERA, ROOT, run_train

pytestmark = pytest.mark.slow

# Deterministic and small: 4 pretraining epochs of 4 steps, 3 fine-tuning epochs, no loader workers.
RESUMABLE = ["chain=pretrain_finetune", "seed=7", "trainer.deterministic=true", "dataset.num_workers=0",
             "method.epochs=4", "method.batch_size=32", "method.K=256", "trainer.limit_train_batches=4",
             "trainer.limit_val_batches=2", "stages.finetune.epochs=3", "stages.pretrain.knn.every_n_epochs=0"]


def kill_when(args, log_dir, artifact_glob, unfinished_glob):
    """Start train.py and SIGKILL it as soon as an artifact exists; the stage must still be running."""
    cmd = [sys.executable, str(ROOT / "train.py"), f"paths.log_dir={log_dir}", "callbacks.progress_bar=none",
           "print_config=false", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(log_dir.glob(artifact_glob)):
        assert proc.poll() is None, "the run finished before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not list(log_dir.glob(unfinished_glob)), "killed too late: the stage had already finished"


def final_metrics(run):
    return [(s["stage"], s["epochs"], s["metrics"]) for s in run.results()["stages"]]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run = run_train(RESUMABLE, tmp_path_factory.mktemp("reference") / "outputs")
    assert run.returncode == 0, run.output[-3000:]
    return final_metrics(run)


def test_sigkill_mid_pretraining_then_same_command_resumes_to_identical_metrics(tmp_path, uninterrupted):
    log_dir = tmp_path / "outputs"
    kill_when(RESUMABLE, log_dir, "*/*/0_pretrain/checkpoints/last.ckpt", "*/*/0_pretrain/results.json")
    resumed = run_train(RESUMABLE, log_dir)
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert "stage pretrain: resuming from" in resumed.output and "(epoch " in resumed.output
    assert final_metrics(resumed) == uninterrupted


def test_chain_killed_in_its_second_stage_resumes_there(tmp_path, uninterrupted):
    log_dir = tmp_path / "outputs"
    kill_when(RESUMABLE, log_dir, "*/*/1_finetune/checkpoints/last.ckpt", "*/*/1_finetune/results.json")
    resumed = run_train(RESUMABLE, log_dir)
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert "stage pretrain already finished" in resumed.output
    assert "stage finetune: resuming from" in resumed.output
    assert final_metrics(resumed) == uninterrupted


def test_bad_images_are_skipped_counted_and_reported(train):
    run = train(["dataset=imagefolder", f"dataset.root={HYMENOPTERA}", "debug=tiny", "dataset.eval_resolution=32",
                 "resolution=16", "architecture=resnet10", "dataset.num_workers=0", "chain=pretrain_finetune"])
    assert run.returncode == 0, run.output[-3000:]
    stages = run.results()["stages"]
    assert stages[0]["skipped_images"] == {"train": 1, "test": 0}
    assert "imageNotFound.gif" in run.output


def test_bad_images_with_fail_policy_name_the_file(train):
    run = train(["dataset=imagefolder", f"dataset.root={HYMENOPTERA}", "dataset.bad_images=fail", "debug=tiny"])
    assert run.returncode == 2
    line = run.stderr.strip().splitlines()[-1]
    assert "imageNotFound.gif" in line and "dataset.bad_images=skip" in line


def test_truncated_checkpoint_is_named_in_one_line(train, tmp_path):
    broken = tmp_path / "backbone.pt"
    broken.write_bytes(b"PK\x03\x04 truncated")
    run = train(["stage=finetune", f"stage.init={broken}", "debug=tiny"])
    assert run.returncode == 2
    line = run.stderr.strip().splitlines()[-1]
    assert f"cannot read checkpoint {broken}" in line and "backbone.pt" in line


def test_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint(train):
    run = train(["stage=finetune", "stage.init=null", "stage.lr=1e30", "trainer.max_epochs=1",
                 "trainer.limit_train_batches=6", "dataset.num_workers=0"])
    assert run.returncode == 2
    assert "non-finite loss" in run.stderr and "step" in run.stderr


def test_sigterm_saves_a_checkpoint_before_exiting_and_the_run_resumes(tmp_path):
    log_dir = tmp_path / "outputs"
    args = [*RESUMABLE, "trainer.limit_train_batches=40", "method.epochs=2"]
    cmd = [sys.executable, str(ROOT / "train.py"), f"paths.log_dir={log_dir}", "callbacks.progress_bar=none",
           "print_config=false", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not list(log_dir.glob("*/*/0_pretrain/metrics.csv")) and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(3)  # a few training steps into epoch 0, long before its end-of-epoch checkpoint
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "SIGTERM received: saved" in output and "run the same command to resume" in output
    (last,) = log_dir.glob("*/*/0_pretrain/checkpoints/last.ckpt")
    resumed = run_train(args, log_dir)
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert "stage pretrain: resuming from" in resumed.output
