"""Every experiment composes, validates and instantiates; the YAML carries the upstream recipe."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from s3l.config import quote_numeric_group_overrides, stage_specs
from s3l.errors import S3LError
from s3l.methods.base import method_class
from s3l.stages.base import build_stage
from s3l.stages.classify import Classifier
from s3l.stages.evaluation import EvaluationStage
from s3l.stages.training import TrainingStage
from s3l.validate import validate_config
from tests.conftest import CONFIGS, CUB_SUBSET

DATASETS = sorted(p.stem for p in (CONFIGS / "dataset").glob("*.yaml") if p.stem != "digits")
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_validates_and_instantiates(compose_cfg, experiment, tmp_path):
    # Every dataset's root set (validation checks that it is; only building a dataset reads it).
    overrides = [f"experiment={experiment}", *(f"paths.datasets.{name}={CUB_SUBSET}" for name in DATASETS)]
    backbone = tmp_path / "backbone.pt"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, backbone)  # what validation reads: the stem's conv1
    if experiment == "cub_linear":
        overrides.append(f"stages.linear.init={backbone}")
    if "backbone: ???" in (CONFIGS / "experiment" / f"{experiment}.yaml").read_text():
        overrides.append(f"backbone={backbone}")
    if "subset: ???" in (CONFIGS / "experiment" / f"{experiment}.yaml").read_text():  # the small-ImageNet runs
        subset = tmp_path / "subset.json"
        subset.write_text('{"splits": {"train": [["a/1.jpg", "a"]], "test": []}}')
        overrides.append(f"subset={subset}")
    cfg = compose_cfg(*overrides)
    specs = stage_specs(cfg)
    validate_config(cfg, specs)
    train = SimpleNamespace(classes=list(range(200)))
    with torch.device("meta"):  # structure only: no memory, no init time
        for spec in specs:
            stage = build_stage(cfg, spec)
            if not isinstance(stage, TrainingStage):
                assert isinstance(stage, EvaluationStage)
                continue
            module = stage.build_module(train, world_size=1)
            expected = method_class(cfg.method) if spec.cfg.kind == "pretrain" else Classifier
            assert type(module) is expected


@pytest.mark.parametrize(("experiment", "cls", "recipe"), [
    ("cub_112_mocov2", "MoCoV2", (0.03, 128, 200, 0)),
    ("cub_112_simclr", "SimCLR", (0.5, 512, 200, 10)),
    ("cub_112_byol", "BYOL", (0.125, 128, 800, 0)),
    ("cub_112_simsiam", "SimSiam", (0.025, 128, 200, 0)),
])
def test_each_methods_cub_experiment_carries_its_recipe_into_the_pretraining_stage(compose_cfg, experiment, cls,
                                                                                    recipe):
    cfg = compose_cfg(f"experiment={experiment}", "dataset.root=/data")
    pretrain = cfg.stages.pretrain
    assert method_class(cfg.method).__name__ == cls and pretrain.resolution == 112
    assert (pretrain.lr, pretrain.batch_size, pretrain.epochs, pretrain.warmup_epochs) == recipe
    assert cfg.augmentation.name == "mocov2" and cfg.optimizer._target_ == "s3l.optim.sgd"  # upstream, all
    assert list(cfg.chain) == ["pretrain", "finetune"] and cfg.stages.finetune.resolution == 224


def test_cub_experiments_carry_the_upstream_moco_recipe(compose_cfg):
    cfg = compose_cfg("experiment=cub_112_mocov2", "dataset.root=/data")
    pretrain, finetune = cfg.stages.pretrain, cfg.stages.finetune
    assert (cfg.method.K, cfg.method.m, cfg.method.T, cfg.method.dim, cfg.method.mlp) == (4096, 0.999, 0.2, 128, True)
    assert (pretrain.lr, pretrain.momentum, pretrain.weight_decay) == (0.03, 0.9, 1e-4)
    assert (pretrain.batch_size, pretrain.epochs, pretrain.lr_schedule) == (128, 200, "cosine_epoch")
    assert pretrain.resolution == 112 and cfg.augmentation.view1.min_scale == cfg.augmentation.view2.min_scale == 0.2
    assert cfg.architecture.name == "resnet50" and cfg.method.bn_splits == 4
    assert (finetune.lr, finetune.batch_size, finetune.epochs, finetune.weight_decay) == (0.1, 64, 120, 5e-4)
    assert finetune.resolution == 224 and finetune.mixup_alpha == 1.0 and finetune.lr_schedule == "cosine_step"


def test_small_architecture_chain_warms_up_conv5_then_finetunes_the_full_network(compose_cfg):
    cfg = compose_cfg("experiment=cub_custom_resnet50_112_mocov2", "dataset.root=/data")
    assert list(cfg.chain) == ["pretrain", "warmup", "finetune"]
    assert cfg.stages.pretrain.architecture == "custom_resnet50"
    warmup = cfg.stages.warmup
    assert (warmup.architecture, warmup.epochs, warmup.lr, warmup.lr_schedule) == ("resnet50", 10, 0.1, "constant")
    assert (warmup.freeze, warmup.fc_init, warmup.mixup_alpha) == ("conv1-4", "normal", 0.0)
    assert cfg.stages.finetune.architecture == "resnet50"


def test_multistage_chain_continues_pretraining_at_224(compose_cfg):
    cfg = compose_cfg("experiment=cub_112to224_mocov2", "dataset.root=/data")
    assert list(cfg.chain) == ["pretrain", "pretrain_224", "finetune"]
    assert (cfg.stages.pretrain.resolution, cfg.stages.pretrain_224.resolution) == (112, 224)
    assert cfg.stages.pretrain_224.init == "previous" and cfg.stages.pretrain_224.epochs == 50


def test_scratch_baseline_has_random_init_and_no_mixup(compose_cfg):
    cfg = compose_cfg("experiment=cub_scratch", "dataset.root=/data")
    assert cfg.stages.scratch.init is None and cfg.stages.scratch.mixup_alpha == 0.0


def test_resolution_sweep_values_are_accepted_unquoted():
    assert quote_numeric_group_overrides(["resolution=56,112,224", "method.K=64"]) == [
        "resolution='56','112','224'", "method.K=64"]


@pytest.mark.parametrize("resolution", ["56", "112", "224"])
def test_resolution_group_sets_the_pretraining_size_only(compose_cfg, resolution):
    cfg = compose_cfg("experiment=cub_mocov2", f"resolution={resolution}", "dataset.root=/data")
    assert cfg.stages.pretrain.resolution == int(resolution) and cfg.stages.finetune.resolution == 224


def test_single_stage_mode_runs_the_selected_stage_alone(compose_cfg, tmp_path):
    ckpt = tmp_path / "backbone.pt"
    ckpt.touch()
    cfg = compose_cfg("stage=finetune", f"stage.init={ckpt}")
    (spec,) = stage_specs(cfg)
    assert spec.key == "stage" and spec.cfg.kind == "finetune" and Path(spec.cfg.init) == ckpt


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method.K=4000"], "method.K=4000 is not a multiple of the global batch stages.pretrain.batch_size=128"),
        (["method.bn_splits=3"], "not divisible by method.bn_splits=3"),
        (["resolution=16", "stages.pretrain.resolution=0"], "stages.pretrain.resolution=0 must be > 0"),
        (["stages.finetune.init=/no/such/file.pt"], "stages.finetune.init=/no/such/file.pt does not exist"),
        (["experiment=cub_112_mocov2"], "dataset.root is not set for dataset=cub200"),
        (["architecture=custom_resnet18", "stages.finetune.architecture=resnet18"], "add a warm-up stage"),
    ],
)
def test_impossible_configs_fail_before_any_data_with_one_line(compose_cfg, overrides, message):
    cfg = compose_cfg(*overrides)
    with pytest.raises(S3LError) as error:
        validate_config(cfg, stage_specs(cfg))
    assert message in str(error.value) and "\n" not in str(error.value)
