"""The ImageNet experiments carry the upstream ImageNet_experiments settings (numbers written here, from the
upstream scripts: main_moco.py README command, moco_imagenet.sh, supervised_training.sh, lincls.sh)."""

import json

import pytest

from s3l.checkpoints import export_backbone
from s3l.config import stage_specs
from s3l.errors import S3LError
from s3l.methods.base import method_class
from s3l.models.resnet import build_backbone
from s3l.validate import validate_config

FULL_IMAGENET_MOCO = {  # experiment: (pretraining resolution, chain)
    "imagenet_112_mocov2": (112, ["pretrain", "linear"]),
    "imagenet_224_mocov2": (224, ["pretrain", "linear"]),
    "imagenet_112to224_mocov2": (112, ["pretrain", "pretrain_224", "linear"]),
}
SMALL_IMAGENET_MOCO = {  # experiment: (K, lr, batch, epochs)
    "smallimagenet_total50k_112_mocov2": (32768, 0.3, 256, 800),  # moco_imagenet.sh
    "smallimagenet_n10_112_mocov2": (8192, 0.3, 256, 8000),  # the n_10 checkpoint's 8000 epochs; K fits 10k images
}
NEEDS_SUBSET = [*SMALL_IMAGENET_MOCO, "smallimagenet_total50k_supervised"]
ALL = [*FULL_IMAGENET_MOCO, *NEEDS_SUBSET, "imagenet_linear"]


@pytest.fixture
def subset_json(tmp_path):
    path = tmp_path / "subset.json"
    path.write_text(json.dumps({"splits": {"train": [["n01440764/a.JPEG", "n01440764"]], "test": []}}))
    return path


@pytest.fixture(scope="module")
def resnet50_backbone(module_tmp):
    meta = {"architecture": "resnet50", "stem": "imagenet", "resolution": 112, "stage": "pretrain",
            "kind": "pretrain", "method": "mocov2", "dataset": "imagenet", "epochs": 0, "config_hash": None}
    return export_backbone(build_backbone("resnet50"), module_tmp, meta)


def test_the_imagenet_dataset_reads_the_standard_layout_with_the_lincls_protocol(compose_cfg):
    cfg = compose_cfg("experiment=imagenet_linear", "paths.datasets.imagenet=/data/imagenet")
    dataset = cfg.dataset
    assert dataset._target_ == "s3l.data.datasets.ImageFolderSplit"  # root/train/<wnid>, root/val/<wnid>
    assert (dataset.name, dataset.num_classes, dataset.metric, dataset.root) == ("imagenet", 1000, "top1", "/data/imagenet")
    assert dataset.eval_resolution == 224 and dataset.subset is None
    linear = dataset.protocol.linear
    assert (linear.lr, linear.epochs, linear.lr_schedule, list(linear.milestones)) == (30.0, 100, "step", [60, 80])
    assert (linear.weight_decay, linear.train_crop, linear.bn_frozen) == (0.0, "random_resized_crop", True)
    finetune = dataset.protocol.finetune
    assert (finetune.lr, finetune.epochs, finetune.lr_schedule, list(finetune.milestones)) == (0.01, 30, "step", [10, 20])
    assert (finetune.weight_decay, finetune.train_crop, finetune.bn_frozen) == (1e-4, "random_resized_crop", False)


@pytest.mark.parametrize(("experiment", "resolution", "chain"), [(e, *v) for e, v in FULL_IMAGENET_MOCO.items()])
def test_full_imagenet_pretraining_is_the_readme_main_moco_command(compose_cfg, experiment, resolution, chain):
    cfg = compose_cfg(f"experiment={experiment}", "paths.datasets.imagenet=/data/imagenet")
    assert cfg.name == experiment and cfg.dataset.name == "imagenet" and list(cfg.chain) == chain
    assert method_class(cfg.method).__name__ == "MoCoV2" and cfg.architecture.name == "resnet50"
    method = cfg.method
    assert (method.K, method.m, method.T, method.dim, method.mlp) == (65536, 0.999, 0.2, 128, True)
    assert method.bn_splits == 8  # BatchNorm over 32 images, as 8 GPUs x 32
    pretrain = cfg.stages.pretrain
    assert (pretrain.lr, pretrain.batch_size, pretrain.epochs, pretrain.resolution) == (0.03, 256, 200, resolution)
    assert (pretrain.momentum, pretrain.weight_decay, pretrain.lr_schedule) == (0.9, 1e-4, "cosine_epoch")
    assert (pretrain.warmup_epochs, pretrain.init) == (0, "previous")
    assert cfg.augmentation.name == "mocov2" and cfg.augmentation.view1.min_scale == 0.2  # --aug-plus
    assert cfg.optimizer._target_ == "s3l.optim.sgd"
    assert pretrain.knn.every_n_epochs == 0  # no online kNN over 1.28M images


def test_multistage_continues_50_epochs_at_224_with_lr_003_from_the_112_state(compose_cfg):
    cfg = compose_cfg("experiment=imagenet_112to224_mocov2", "paths.datasets.imagenet=/data/imagenet")
    first, second = cfg.stages.pretrain, cfg.stages.pretrain_224
    assert (first.resolution, first.epochs) == (112, 200)
    assert (second.resolution, second.epochs, second.lr, second.batch_size) == (224, 50, 0.03, 256)
    assert second.init == "previous" and second.lr_schedule == "cosine_epoch" and second.knn.every_n_epochs == 0
    assert cfg.stages.linear.init == "previous"


@pytest.mark.parametrize("experiment", [*FULL_IMAGENET_MOCO, "imagenet_linear"])
def test_the_linear_evaluation_is_main_lincls(compose_cfg, experiment, tmp_path):
    backbone = [f"backbone={tmp_path / 'backbone.pt'}"] if experiment == "imagenet_linear" else []
    cfg = compose_cfg(f"experiment={experiment}", "paths.datasets.imagenet=/data/imagenet", *backbone)
    linear = cfg.stages.linear
    assert linear.kind == "linear" and linear.resolution == 224  # 224 even after 112 px pretraining
    assert (linear.lr, linear.batch_size, linear.epochs, linear.momentum) == (30.0, 256, 100, 0.9)
    assert (linear.lr_schedule, list(linear.milestones), linear.weight_decay) == ("step", [60, 80], 0.0)
    assert (linear.freeze, linear.bn_frozen, linear.fc_init) == ("backbone", True, "normal")  # fc ~ N(0, 0.01)
    assert (linear.train_crop, linear.mixup_alpha) == ("random_resized_crop", 0.0)
    expected_init = str(tmp_path / "backbone.pt") if experiment == "imagenet_linear" else "previous"
    assert linear.init == expected_init


@pytest.mark.parametrize(("experiment", "recipe"), list(SMALL_IMAGENET_MOCO.items()))
def test_small_imagenet_pretraining_is_moco_imagenet_sh_on_the_given_subset(compose_cfg, experiment, recipe,
                                                                           subset_json):
    cfg = compose_cfg(f"experiment={experiment}", "paths.datasets.imagenet=/data/imagenet", f"subset={subset_json}")
    assert list(cfg.chain) == ["pretrain"] and cfg.dataset.name == "imagenet"
    assert cfg.dataset.subset == str(subset_json) and cfg.dataset.root == "/data/imagenet"  # read in place
    pretrain, method = cfg.stages.pretrain, cfg.method
    assert (method.K, pretrain.lr, pretrain.batch_size, pretrain.epochs) == recipe
    assert method.K % pretrain.batch_size == 0
    assert (method.m, method.T, method.mlp, method.bn_splits) == (0.999, 0.2, True, 8)
    assert (pretrain.resolution, pretrain.lr_schedule, pretrain.weight_decay) == (112, "cosine_epoch", 1e-4)


def test_small_imagenet_supervised_baseline_is_main_supervised(compose_cfg, subset_json):
    cfg = compose_cfg("experiment=smallimagenet_total50k_supervised", "paths.datasets.imagenet=/data/imagenet",
                      f"subset={subset_json}")
    assert list(cfg.chain) == ["scratch"] and cfg.dataset.subset == str(subset_json)
    scratch = cfg.stages.scratch
    assert scratch.init is None and scratch.kind == "finetune" and scratch.architecture == "resnet50"
    assert (scratch.lr, scratch.batch_size, scratch.epochs, scratch.resolution) == (0.1, 256, 800, 224)
    assert (scratch.lr_schedule, scratch.momentum, scratch.weight_decay) == ("cosine_epoch", 0.9, 0.0)
    assert (scratch.train_crop, scratch.mixup_alpha, scratch.bn_frozen, scratch.freeze) == (
        "random_resized_crop", 0.0, False, "none")


@pytest.mark.parametrize("experiment", NEEDS_SUBSET)
def test_a_missing_subset_is_one_line_before_any_data(compose_cfg, experiment):
    cfg = compose_cfg(f"experiment={experiment}", "paths.datasets.imagenet=/data/imagenet")
    with pytest.raises(S3LError) as error:
        validate_config(cfg, stage_specs(cfg))
    assert str(error.value) == ("subset is required by this experiment and not set: pass subset=... (the subset.json "
                                "that `python -m s3l.subsets` writes beside the subset it builds)")


def test_imagenet_linear_without_a_backbone_is_one_line(compose_cfg):
    cfg = compose_cfg("experiment=imagenet_linear", "paths.datasets.imagenet=/data/imagenet")
    with pytest.raises(S3LError) as error:
        validate_config(cfg, stage_specs(cfg))
    assert str(error.value).startswith("backbone is required by this experiment and not set: pass backbone=...")
    assert "\n" not in str(error.value)


def test_a_missing_imagenet_root_names_the_path_setting(compose_cfg):
    cfg = compose_cfg("experiment=imagenet_112_mocov2")
    with pytest.raises(S3LError) as error:
        validate_config(cfg, stage_specs(cfg))
    assert "dataset.root is not set for dataset=imagenet: pass paths.datasets.imagenet=" in str(error.value)


@pytest.mark.parametrize("experiment", ALL)
def test_every_imagenet_experiment_validates_once_its_inputs_are_given(compose_cfg, experiment, tmp_path, subset_json,
                                                                       resnet50_backbone):
    inputs = ([f"subset={subset_json}"] if experiment in NEEDS_SUBSET else []) + (
        [f"backbone={resnet50_backbone}"] if experiment == "imagenet_linear" else [])
    cfg = compose_cfg(f"experiment={experiment}", f"paths.datasets.imagenet={tmp_path}", *inputs)
    validate_config(cfg, stage_specs(cfg))
