"""End to end on the embedded digits: the demo chain, its artifacts, and skipping finished stages."""

import csv
import json

import pytest
import torch

pytestmark = pytest.mark.slow


def test_demo_chain_writes_a_self_describing_run_directory(train):
    run = train(["debug=tiny"], env={"PYTHONWARNINGS": "default"})
    assert run.returncode == 0, run.output[-3000:]
    for noise in ("val_dataloader", "litlogger", "LeafSpec", "Warning"):  # quiet by default
        assert noise not in run.output
    run_dir = run.run_dir()
    results = run.results()
    assert results["chain"] == ["pretrain", "finetune", "scratch"]
    assert results["final"]["stage"] == "finetune"  # the scratch arm is a baseline, not the chain's outcome
    for index, name in enumerate(results["chain"]):
        stage_dir = run_dir / f"{index}_{name}"
        for artifact in ("results.json", "config.yaml", "metrics.csv", "backbone.pt", "backbone.json",
                         "checkpoints/last.ckpt"):
            assert (stage_dir / artifact).is_file(), f"{stage_dir / artifact} missing"
    assert (run_dir / "config_resolved.yaml").is_file()
    assert (run_dir / "0_pretrain" / "method_state.pt").is_file()
    finetune = results["stages"][1]
    assert 0.0 <= finetune["metrics"]["top1_last"] <= 1.0
    assert finetune["init_from"].endswith("0_pretrain")
    assert results["stages"][2]["init_from"] is None
    assert finetune["cost"]["images_per_s"] > 0 and finetune["cost"]["train_pflops"] > 0
    with open(run_dir / "1_finetune" / "metrics.csv") as f:
        assert "val/acc1" in next(csv.reader(f))
    meta = json.loads((run_dir / "0_pretrain" / "backbone.json").read_text())
    assert meta["architecture"] == "resnet10" and meta["resolution"] == 16 and meta["method"] == "mocov2"
    assert "score last" in run.stdout and str(run_dir) in run.stdout


def test_finetune_starts_from_the_pretrained_backbone_and_a_rerun_skips_both_stages(train):
    first = train(["debug=tiny", "chain=pretrain_finetune"])
    assert first.returncode == 0, first.output[-3000:]
    run_dir = first.run_dir()
    pretrained = torch.load(run_dir / "0_pretrain" / "backbone.pt", weights_only=True)
    assert "layer4.0.conv1.weight" in pretrained and not any(k.startswith("fc.") for k in pretrained)
    assert "init = backbone from" in first.output and "0_pretrain/backbone.pt" in first.output

    again = train(["debug=tiny", "chain=pretrain_finetune"])
    assert again.returncode == 0, again.output[-3000:]
    assert again.output.count("already finished") == 2
    assert "Trainer.fit" not in again.output
    assert again.results()["stages"] == first.results()["stages"]
