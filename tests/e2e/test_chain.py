"""The S3L chain end to end: small architecture -> conv5 warm-up -> fine-tune on real CUB photos, skipping
finished stages on a re-run, single stages from any checkpoint (ours or the original code's), and the
clear error for a checkpoint of another architecture."""

import json

import pytest
import torch

from s3l.models.resnet import build_backbone
from tests.conftest import CUB_SUBSET

pytestmark = pytest.mark.slow

SMALL_ARCH_CHAIN = [
    "experiment=cub_custom_resnet50_112_mocov2", f"dataset.root={CUB_SUBSET}", "debug=tiny",
    "architecture=custom_resnet18", "resolution=32", "dataset.eval_resolution=48", "dataset.num_workers=0",
    "stages.warmup.batch_size=16", "stages.finetune.batch_size=16",
]


def test_small_architecture_chain_runs_warmup_then_finetune_and_skips_them_on_rerun(train):
    run = train(SMALL_ARCH_CHAIN)
    assert run.returncode == 0, run.output[-3000:]
    results = run.results()
    assert results["chain"] == ["pretrain", "warmup", "finetune"]
    archs = [s["architecture"] for s in results["stages"]]
    assert archs == ["custom_resnet18", "resnet18", "resnet18"]
    run_dir = run.run_dir()
    pretrained = torch.load(run_dir / "0_pretrain" / "backbone.pt", weights_only=True)
    warmed = torch.load(run_dir / "1_warmup" / "backbone.pt", weights_only=True)
    assert not any(k.startswith("layer4.") for k in pretrained)
    assert any(k.startswith("layer4.") for k in warmed)
    # conv1-4 were frozen during the warm-up: their weights are the pretrained ones
    assert torch.equal(pretrained["layer3.0.conv1.weight"], warmed["layer3.0.conv1.weight"])
    assert results["stages"][2]["init_from"].endswith("1_warmup")
    assert json.loads((run_dir / "1_warmup" / "backbone.json").read_text())["architecture"] == "resnet18"

    again = train(SMALL_ARCH_CHAIN)
    assert again.returncode == 0, again.output[-3000:]
    assert again.output.count("already finished") == 3 and "Trainer.fit" not in again.output


def test_finetune_alone_from_an_original_moco_checkpoint(train, tmp_path):
    backbone = build_backbone("resnet10")
    state = {f"module.encoder_q.{k}": v for k, v in backbone.state_dict().items()}
    state["module.encoder_q.fc.0.weight"] = torch.randn(512, 512)
    state["module.encoder_q.fc.2.weight"] = torch.randn(128, 512)
    state.update({f"module.encoder_k.{k}": torch.zeros_like(v) for k, v in backbone.state_dict().items()})
    state["module.queue"] = torch.randn(128, 64)
    original = tmp_path / "checkpoint_0199.pth.tar"
    torch.save({"epoch": 200, "arch": "resnet10", "state_dict": state, "optimizer": {}}, original)

    run = train(["stage=finetune", f"stage.init={original}", "debug=tiny"])
    assert run.returncode == 0, run.output[-3000:]
    (result,) = run.results()["stages"]
    assert result["kind"] == "finetune" and result["init_from"] == str(original)
    assert "init = backbone from" in run.output


def test_checkpoint_of_another_architecture_fails_with_a_clear_message(train, tmp_path):
    torch.save(build_backbone("resnet10").state_dict(), tmp_path / "backbone.pt")
    run = train(["stage=finetune", f"stage.init={tmp_path / 'backbone.pt'}", "architecture=resnet18",
                 "debug=tiny"])
    assert run.returncode == 2
    line = run.stderr.strip().splitlines()[-1]
    assert f"checkpoint {tmp_path / 'backbone.pt'} does not fit resnet18" in line and "missing keys" in line
    assert "Traceback" not in run.output and "Trainer.fit" not in run.output


def test_multistage_pretraining_inherits_the_full_moco_state(train):
    run = train(["chain=multistage", "debug=tiny", "stages.pretrain_224.resolution=32", "dataset.num_workers=0"])
    assert run.returncode == 0, run.output[-3000:]
    results = run.results()
    assert [s["resolution"] for s in results["stages"]] == [16, 32, 32]
    second = results["stages"][1]
    assert second["init"].startswith("full MoCoV2 state from") and "0_pretrain" in second["init"]
    run_dir = run.run_dir()
    first_state = torch.load(run_dir / "0_pretrain" / "method_state.pt", weights_only=True)
    second_state = torch.load(run_dir / "1_pretrain_224" / "method_state.pt", weights_only=True)
    # 2 steps of 16 keys: the inherited queue moved on by 32 slots from where stage 1 left it,
    # and every slot stage 2 did not write still holds stage 1's keys
    K, start = first_state["queue"].shape[1], int(first_state["queue_ptr"])
    assert int(second_state["queue_ptr"]) == (start + 32) % K
    written = (start + torch.arange(32)) % K
    untouched = torch.ones(K, dtype=torch.bool)
    untouched[written] = False
    assert torch.equal(second_state["queue"][:, untouched], first_state["queue"][:, untouched])
    assert not torch.equal(second_state["queue"][:, written], first_state["queue"][:, written])
