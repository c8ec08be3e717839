"""Kill a run with SIGKILL, start the same command again: it resumes and ends with the same metrics, the same
metrics.csv rows and the summed cost of an uninterrupted run. Also the bad-input cases a user meets, each with
its one-line message."""

import csv
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import HYMENOPTERA, ROOT, TrainRun, is_whole_zombie, run_train

pytestmark = pytest.mark.slow

# Deterministic and small: 4 pretraining epochs of 4 steps (kNN after epochs 2 and 4), 3 fine-tuning epochs,
# no loader workers, a metrics.csv row at every step.
RESUMABLE = ["chain=pretrain_finetune", "seed=7", "trainer.deterministic=true", "dataset.num_workers=0",
             "method.epochs=4", "method.batch_size=32", "method.K=256", "trainer.limit_train_batches=4",
             "trainer.limit_val_batches=2", "stages.finetune.epochs=3", "stages.pretrain.knn.every_n_epochs=2",
             "trainer.log_every_n_steps=1",
             "callbacks.checkpoint.every_n_epochs=1"]  # a checkpoint at every epoch: the kills count saves
TRAIN_FLAGS = ["callbacks.progress_bar=none", "print_config=false"]


def kill_when(args, log_dir, artifact_glob, unfinished_glob) -> subprocess.Popen:
    """Start train.py and SIGKILL it as soon as an artifact exists; the stage must still be running.

    The killed process is left unreaped (a zombie, as under a supervisor that never calls wait()), so the
    rerun proves that nothing depends on the dead run's pid; the caller reaps it afterwards.
    """
    cmd = [sys.executable, str(ROOT / "train.py"), f"paths.log_dir={log_dir}", *TRAIN_FLAGS, *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(log_dir.glob(artifact_glob)):
        assert proc.poll() is None, "the run finished before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    while not is_whole_zombie(proc.pid):
        time.sleep(0.01)
    assert not list(log_dir.glob(unfinished_glob)), "killed too late: the stage had already finished"
    return proc


def die_after(moment: str, args, log_dir) -> TrainRun:
    """train.py ended like a SIGKILL at a chosen instant (tests/e2e/die_after.py)."""
    cmd = [sys.executable, str(ROOT / "tests" / "e2e" / "die_after.py"), f"paths.log_dir={log_dir}", *TRAIN_FLAGS,
           *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONWARNINGS": "ignore", "S3L_DIE_AFTER": moment})
    assert proc.returncode == 137, proc.stdout[-2000:] + proc.stderr[-2000:]
    return TrainRun(proc, log_dir)


def final_metrics(run):
    return [(s["stage"], s["epochs"], s["metrics"]) for s in run.results()["stages"]]


def csv_rows(run, stage: str) -> list[dict]:
    """A stage's metrics.csv rows without the cost columns (wall-clock differs between attempts)."""
    with open(run.run_dir() / stage / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if not k.startswith("cost/")} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def uninterrupted(module_tmp):
    run = run_train(RESUMABLE, module_tmp / "outputs")
    assert run.returncode == 0, run.output[-3000:]
    return run


def test_sigkill_mid_pretraining_unreaped_then_same_command_resumes_at_once_to_identical_metrics(
        tmp_path, uninterrupted):
    log_dir = tmp_path / "outputs"
    zombie = kill_when(RESUMABLE, log_dir, "*/*/0_pretrain/checkpoints/last.ckpt", "*/*/0_pretrain/results.json")
    resumed = run_train(RESUMABLE, log_dir)
    zombie.wait()
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert "stage pretrain: resuming from" in resumed.output and "(epoch " in resumed.output
    assert final_metrics(resumed) == final_metrics(uninterrupted)


def test_chain_killed_in_its_second_stage_resumes_there(tmp_path, uninterrupted):
    log_dir = tmp_path / "outputs"
    zombie = kill_when(RESUMABLE, log_dir, "*/*/1_finetune/checkpoints/last.ckpt", "*/*/1_finetune/results.json")
    resumed = run_train(RESUMABLE, log_dir)
    zombie.wait()
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert "stage pretrain already finished" in resumed.output
    assert "stage finetune: resuming from" in resumed.output
    assert final_metrics(resumed) == final_metrics(uninterrupted)


def test_kill_right_after_a_checkpoint_loses_no_csv_row_and_sums_the_cost_of_both_attempts(tmp_path, uninterrupted):
    log_dir = tmp_path / "outputs"
    die_after("save:2:pretrain", RESUMABLE, log_dir)  # the end of epoch 2, just before its kNN row is written
    resumed = run_train(RESUMABLE, log_dir)
    assert resumed.returncode == 0, resumed.output[-3000:]
    for stage in ("0_pretrain", "1_finetune"):
        assert csv_rows(resumed, stage) == csv_rows(uninterrupted, stage)
    pretrain, reference = resumed.results()["stages"][0]["cost"], uninterrupted.results()["stages"][0]["cost"]
    assert pretrain["attempts"] == 2 and reference["attempts"] == 1
    assert pretrain["train_images"] == reference["train_images"] == 4 * 4 * 32
    assert pretrain["train_pflops"] == pytest.approx(reference["train_pflops"])


def test_kill_between_the_last_checkpoint_and_results_json_keeps_every_metric(tmp_path, uninterrupted):
    log_dir = tmp_path / "outputs"
    die_after("export:pretrain", RESUMABLE, log_dir)
    resumed = run_train(RESUMABLE, log_dir)
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert final_metrics(resumed) == final_metrics(uninterrupted)
    pretrain = resumed.results()["stages"][0]
    assert pretrain["metrics"]["knn_top1"] > 0 and pretrain["cost"]["attempts"] == 2
    assert pretrain["cost"]["wall_clock_s"] > 0


def test_corrupt_last_checkpoint_falls_back_to_the_previous_one_and_ends_identically(tmp_path, uninterrupted):
    log_dir = tmp_path / "outputs"
    die_after("save:3:pretrain", RESUMABLE, log_dir)
    (last,) = log_dir.glob("*/*/0_pretrain/checkpoints/last.ckpt")
    last.write_bytes(b"")  # a disk that lost the newest checkpoint
    resumed = run_train(RESUMABLE, log_dir)
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert "last.ckpt is unreadable" in resumed.output and "resuming from" in resumed.output
    assert "last.previous.ckpt (epoch 1, step 8)" in resumed.output
    assert final_metrics(resumed) == final_metrics(uninterrupted)


def test_changed_settings_between_kill_and_rerun_stop_with_one_line_naming_them(tmp_path):
    run_dir = tmp_path / "pinned"
    args = [*RESUMABLE, f"hydra.run.dir={run_dir}"]
    die_after("save:1:pretrain", args, tmp_path / "outputs")
    changed = run_train([*args, "method.m=0.9", "architecture=resnet18"], tmp_path / "outputs")
    assert changed.returncode == 2
    line = changed.stderr.strip().splitlines()[-1]
    assert "last.ckpt was written by stages.pretrain with other settings than now" in line
    assert "stages.pretrain.architecture resnet10 -> resnet18" in line and "method.m 0.99 -> 0.9" in line
    assert "resume=false" in line and "Traceback" not in changed.output


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
