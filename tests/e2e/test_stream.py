"""Pretraining streamed from LitData shards (dataset.format=litdata) on the CUB subset, end to end: killed in the
middle of an epoch, the same command resumes there and ends with the metrics of an uninterrupted run."""

import pytest

from tests.conftest import CUB_SUBSET, run_train
from tests.e2e.test_resume import die_after, final_metrics

pytest.importorskip("litdata")
pytestmark = pytest.mark.slow

# 300 training images in batches of 32: 9 steps per epoch; a checkpoint every 4 steps and at each epoch's end.
STREAMED = ["experiment=cub_112_mocov2", f"dataset.root={CUB_SUBSET}", "dataset.format=litdata", "stage=pretrain",
            "architecture=resnet10", "architecture.stem=imagenet", "resolution=32", "method.epochs=2",
            "method.batch_size=32", "method.K=256", "seed=7", "trainer.deterministic=true", "dataset.num_workers=0",
            "stages.pretrain.knn.every_n_epochs=1", "trainer.log_every_n_steps=1",
            "callbacks.checkpoint.every_n_epochs=1", "callbacks.checkpoint.every_n_train_steps=4"]


def test_streamed_pretraining_killed_mid_epoch_resumes_to_the_metrics_of_a_straight_run(tmp_path):
    args = [*STREAMED, f"dataset.stream.dir={tmp_path / 'shards'}"]
    straight = run_train(args, tmp_path / "straight")
    assert straight.returncode == 0, straight.output[-3000:]
    assert len(list((tmp_path / "shards").glob("cub200_*"))) == 2  # train and test (the kNN monitor's)
    # Saves at steps 4 and 8, epoch 1's end (step 9), step 12: the 4th is in the middle of epoch 2.
    die_after("save:4:pretrain", args, tmp_path / "killed")
    resumed = run_train(args, tmp_path / "killed")
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert "stage pretrain: resuming from" in resumed.output
    assert final_metrics(resumed) == final_metrics(straight)
