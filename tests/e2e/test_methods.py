"""Every SSL method end to end: a method sweep on real CUB photos summarised in one table, a resume after a
kill with identical metrics on the digits, and a multi-stage hand-over of the whole method state."""

import pytest
import torch

from s3l.summarize import main as summarize_main
from tests.conftest import CONFIGS, CUB_SUBSET, run_train
from tests.e2e.test_resume import die_after, final_metrics

pytestmark = pytest.mark.slow

METHODS = sorted(p.stem for p in (CONFIGS / "method").glob("*.yaml"))
# The ImageNet stem: at 32 px throughout, `auto` would take the CIFAR stem (16x the arithmetic), which these tests
# of the methods do not need (tests/stages/test_stem.py tests the choice).
SMALL = ["architecture=resnet10", "architecture.stem=imagenet", "resolution=32", "dataset.eval_resolution=32",
         "dataset.num_workers=0", "stages.finetune.batch_size=16"]


def test_a_method_sweep_on_cub_trains_every_method_and_summarizes_them(train, tmp_path, capsys):
    run = train(["-m", "experiment=cub_mocov2", f"method={','.join(METHODS)}", f"dataset.root={CUB_SUBSET}",
                 "debug=tiny", *SMALL])
    assert run.returncode == 0, run.output[-3000:]
    (sweep,) = (tmp_path / "outputs" / "cub_mocov2").glob("multirun_*")
    assert summarize_main([str(sweep)]) == 0
    table = (sweep / "summary.md").read_text()
    for method in METHODS:
        assert f"| {method} |" in table
    chains = sorted(sweep.glob("*/results.json"))
    assert len(chains) == len(METHODS)


# Two pretraining epochs of three steps on the digits, the second checkpoint is the end of training.
RESUMABLE = ["stage=pretrain", "seed=3", "trainer.deterministic=true", "dataset.num_workers=0", "method.epochs=2",
             "method.batch_size=32", "trainer.limit_train_batches=3", "stages.pretrain.knn.every_n_epochs=1",
             "method.bn_splits=2", "method.warmup_epochs=0", "trainer.log_every_n_steps=1",
             "callbacks.checkpoint.every_n_epochs=1"]  # a checkpoint at every epoch: the kills count saves


@pytest.mark.parametrize("method", [m for m in METHODS if m != "mocov2"])  # MoCo: tests/e2e/test_resume.py
def test_each_method_resumes_after_a_kill_to_identical_metrics(tmp_path, method):
    args = [*RESUMABLE, f"method={method}"]
    reference = run_train(args, tmp_path / "reference")
    assert reference.returncode == 0, reference.output[-3000:]
    die_after("save:1:pretrain", args, tmp_path / "outputs")  # after epoch 1: the EMA and schedule mid-way
    resumed = run_train(args, tmp_path / "outputs")
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert "stage pretrain: resuming from" in resumed.output
    assert final_metrics(resumed) == final_metrics(reference)
    weights = [torch.load(run.run_dir() / "0_pretrain" / "method_state.pt", weights_only=True)
               for run in (reference, resumed)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # target networks included


def test_multistage_byol_hands_its_target_network_to_the_next_stage(train):
    run = train(["chain=multistage", "method=byol", "debug=tiny", "stages.pretrain_224.resolution=32",
                 "dataset.num_workers=0"])
    assert run.returncode == 0, run.output[-3000:]
    second = run.results()["stages"][1]
    assert second["init"].startswith("full BYOL state from") and "0_pretrain" in second["init"]
    first_state = torch.load(run.run_dir() / "0_pretrain" / "method_state.pt", weights_only=True)
    assert any(k.startswith("target.") for k in first_state)
