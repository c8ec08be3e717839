"""The transfer experiment as users run it: one backbone.pt, a multirun over two datasets (each with its own
root), probe + kNN + fine-tuning on each, ending in one transfer table."""

import csv

import pytest

from s3l.checkpoints import export_backbone
from s3l.models.resnet import build_backbone
from tests.conftest import CUB_SUBSET, HYMENOPTERA

pytestmark = pytest.mark.slow


def test_transfer_multirun_over_two_datasets_ends_in_one_transfer_table(train, tmp_path):
    meta = {"architecture": "resnet10", "stem": "imagenet", "resolution": 32, "stage": "pretrain", "kind": "pretrain",
            "method": "mocov2", "dataset": "cub200", "epochs": 0, "config_hash": None}
    backbone = export_backbone(build_backbone("resnet10"), tmp_path / "pretrained", meta)
    run = train(["-m", "experiment=transfer", f"backbone={backbone}", "dataset=cub200,imagefolder",
                 f"paths.datasets.cub200={CUB_SUBSET}", f"paths.datasets.imagefolder={HYMENOPTERA}",
                 "architecture=resnet10", "dataset.eval_resolution=32", "dataset.num_workers=0",
                 "stages.probe.epochs=10", "stages.finetune.epochs=1", "trainer.limit_train_batches=2",
                 "trainer.limit_val_batches=2"])
    assert run.returncode == 0, run.output[-3000:]
    (sweep,) = list((tmp_path / "outputs" / "transfer").glob("multirun_*"))
    with (sweep / "transfer.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["dataset"] for r in rows] == ["cub200", "imagefolder"]
    assert all(0 <= float(r[stage]) <= 1 for r in rows for stage in ("probe", "knn", "finetune"))
    table = (sweep / "transfer.md").read_text()
    assert table.startswith("| dataset | metric | probe (%) | knn (%) | finetune (%) |")
    assert table in run.output  # printed at the end of the multirun
    assert (sweep / "transfer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
