"""A resolution sweep as users run it: Hydra multirun, one full chain per resolution, W&B offline, then the
summary table and plot; and the SLURM launcher config composes."""

import json

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from s3l.summarize import main as summarize_main
from tests.conftest import CONFIGS

pytestmark = pytest.mark.slow


def test_two_resolution_sweep_gives_two_chains_wandb_runs_and_a_summary(train, tmp_path, capsys):
    run = train(["-m", "debug=tiny", "resolution=16,32", "chain=pretrain_finetune", "logger=wandb",
                 "dataset.num_workers=0"], env={"WANDB_API_KEY": "", "WANDB_SILENT": "true"})
    assert run.returncode == 0, run.output[-3000:]
    (sweep,) = list((tmp_path / "outputs" / "demo").glob("multirun_*"))
    chains = sorted(sweep.glob("*/results.json"))
    assert len(chains) == 2
    assert sorted(json.loads(p.read_text())["pretrain_resolution"] for p in chains) == [16, 32]
    run_ids = {p.name for p in sweep.glob("*/*/wandb/offline-run-*")}
    assert len(run_ids) == 4  # one W&B run per stage per job: wandb.finish() closed each one

    assert summarize_main([str(sweep), "--wandb-project", "s3l-test"]) == 0
    assert list(sweep.glob("wandb/offline-run-*/run-*.wandb"))  # the table as its own W&B run
    table = (sweep / "summary.md").read_text()
    assert "| 16 |" in table and "| 32 |" in table
    assert (sweep / "accuracy_vs_cost.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "summary.csv" in capsys.readouterr().out


def test_slurm_launcher_config_composes_with_the_submitit_plugin():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=s3l_slurm", "trainer.num_nodes=2"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.nodes == 2 and launcher.tasks_per_node == launcher.gpus_per_node == 4
