"""The device-resident data path end to end on the real CUB subset: pretraining then fine-tuning with
dataset.resident=true, killed after its first checkpoint and resumed to the very metrics of a straight run."""

import pytest

from tests.conftest import CUB_SUBSET, run_train
from tests.e2e.test_resume import csv_rows, die_after, final_metrics

pytestmark = pytest.mark.slow

# Two epochs of two steps per stage at 16 px, a checkpoint at every epoch, a metrics.csv row at every step.
RESIDENT = ["experiment=cub_112_mocov2", "chain=pretrain_finetune", f"dataset.root={CUB_SUBSET}",
            "dataset.resident=true", "debug=tiny", "architecture=resnet10", "architecture.stem=imagenet", "resolution=16",
            "dataset.eval_resolution=16", "seed=7", "trainer.deterministic=true", "trainer.max_epochs=2",
            "method.epochs=2", "stages.finetune.epochs=2", "stages.finetune.batch_size=16",
            "stages.pretrain.knn.every_n_epochs=0", "trainer.limit_val_batches=1",
            "callbacks.checkpoint.every_n_epochs=1"]


def test_resident_chain_resumed_after_a_kill_ends_with_the_metrics_of_a_straight_run(tmp_path):
    args = [*RESIDENT, f"paths.root_dir={tmp_path / 'root'}"]
    straight = run_train(args, tmp_path / "straight")
    assert straight.returncode == 0, straight.output[-3000:]
    assert "resident data: train" in straight.output
    die_after("save:1:pretrain", args, tmp_path / "resumed")
    resumed = run_train(args, tmp_path / "resumed")
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert "stage pretrain: resuming from" in resumed.output
    assert final_metrics(resumed) == final_metrics(straight)
    for stage in ("0_pretrain", "1_finetune"):
        rows = csv_rows(resumed, stage)
        assert rows == csv_rows(straight, stage)
        assert any(value for row in rows for key, value in row.items() if key.startswith("train/loss"))
