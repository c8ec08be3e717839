"""End to end on the real 10-class CUB-200-2011 subset (official layout): the paper's experiments with tiny
limits, the queue-size error the full recipe must give there, and the missing-root error."""

import pytest

from tests.conftest import CUB_SUBSET

pytestmark = pytest.mark.slow

# Tiny but real: the recipe's code paths on real photos, with a small net and resolutions so CPUs cope.
TINY = ["debug=tiny", "architecture=resnet10", "resolution=32", "dataset.eval_resolution=48",
        "dataset.num_workers=0", "stages.finetune.batch_size=16", f"dataset.root={CUB_SUBSET}"]


def test_full_cub_recipe_stops_on_the_queue_size_with_both_numbers(train):
    run = train(["experiment=cub_112_mocov2", f"dataset.root={CUB_SUBSET}", "trainer.max_epochs=1"])
    assert run.returncode == 2
    assert "method.K=4096 is too large for dataset cub200: 300 training images" in run.stderr
    assert "global batch 128" in run.stderr and "method.K=128" in run.stderr
    assert "Traceback" not in run.output
    assert "Trainer.fit" not in run.output  # failed before any training


def test_cub_recipe_runs_once_the_queue_fits(train):
    run = train(["experiment=cub_112_mocov2", *TINY])
    assert run.returncode == 0, run.output[-3000:]
    results = run.results()
    assert results["dataset"] == "cub200" and results["chain"] == ["pretrain", "finetune"]
    finetune = results["stages"][1]
    assert finetune["resolution"] == 48 and results["stages"][0]["resolution"] == 32
    assert finetune["skipped_images"] == {"train": 0, "test": 0}
    assert 0.0 <= finetune["metrics"]["top1_last"] <= 1.0


def test_missing_cub_root_is_one_clear_line(train, tmp_path):
    missing = tmp_path / "no_such_cub"
    run = train(["experiment=cub_112_mocov2", f"dataset.root={missing}"])
    assert run.returncode == 2
    line = run.stderr.strip().splitlines()[-1]
    assert str(missing) in line and "images.txt" in line and "data.caltech.edu" in line
    assert "Traceback" not in run.output


def test_cub_pretraining_through_the_fast_data_path(train, tmp_path):
    cache_root = tmp_path / "root"
    run = train(["experiment=cub_112_mocov2", *TINY, "dataset.cache=true", f"paths.root_dir={cache_root}",
                 "chain=pretrain_finetune"])
    assert run.returncode == 0, run.output[-3000:]
    (cache,) = [p for p in (cache_root / ".cache" / "images").iterdir() if not p.name.endswith(".lock")]
    assert cache.name.startswith("cub200_300img_72px_")  # 32 / sqrt(0.2) = 71.6 -> 72 px short side
    assert run.results()["stages"][0]["cost"]["train_images"] > 0


def test_cub_pretraining_with_on_device_augmentation(train, tmp_path):
    """augment_on=device on a CPU trainer: workers draw parameters, the datamodule augments whole batches."""
    run = train(["experiment=cub_112_mocov2", *TINY, "stage=pretrain", "dataset.cache=true",
                 "dataset.augment_on=device", f"paths.root_dir={tmp_path / 'root'}"])
    assert run.returncode == 0, run.output[-3000:]
    (pretrain,) = run.results()["stages"]
    assert pretrain["cost"]["train_images"] > 0 and pretrain["metrics"]


def test_unknown_augment_on_is_one_clear_line(train):
    run = train(["experiment=cub_112_mocov2", *TINY, "dataset.augment_on=gpu"])
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == "error: dataset.augment_on=gpu must be one of workers, device"
    assert "Traceback" not in run.output
