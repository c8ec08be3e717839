"""`architecture.stem: auto`: the CIFAR stem chosen by resolution, never by dataset name; a backbone keeps its own."""

import pytest
import torch

from s3l.config import stage_specs
from s3l.errors import S3LError
from s3l.models.resnet import build_backbone, stem_of
from s3l.validate import validate_config
from tests.conftest import CUB_SUBSET


def settled_stem(compose_cfg, *overrides: str) -> str:
    cfg = compose_cfg(*overrides)
    validate_config(cfg, stage_specs(cfg))
    return cfg.architecture.stem


def backbone_file(tmp_path, stem: str):
    """A plain state dict, as a user's own checkpoint would be (no meta to say the stem)."""
    path = tmp_path / f"resnet10_{stem}.pt"
    torch.save(build_backbone("resnet10", stem).state_dict(), path)
    return path


@pytest.mark.parametrize("stem", ["imagenet", "cifar"])
def test_stem_of_reads_the_conv1_kernel(stem):
    with torch.device("meta"):
        assert stem_of(build_backbone("resnet18", stem).state_dict()) == stem


@pytest.mark.parametrize(("overrides", "stem"), [
    (["resolution=16", "dataset.eval_resolution=32"], "cifar"),          # every stage at <= 32 px
    (["resolution=32", "dataset.eval_resolution=48"], "imagenet"),       # one stage above 32 px
    (["experiment=cub_112_mocov2", f"dataset.root={CUB_SUBSET}"], "imagenet"),
    (["resolution=16", "dataset.eval_resolution=32", "architecture.stem=imagenet"], "imagenet"),  # explicit wins
])
def test_auto_stem_follows_the_resolutions_of_every_stage(compose_cfg, overrides, stem):
    assert settled_stem(compose_cfg, "experiment=demo", "architecture.stem=auto", *overrides) == stem


def test_the_cifar_dataset_gets_no_stem_of_its_own(compose_cfg, tmp_path):
    """A backbone pretrained at 112 px keeps its ImageNet stem when fine-tuned on 32 px CIFAR (as upstream)."""
    backbone = backbone_file(tmp_path, "imagenet")
    assert settled_stem(compose_cfg, "experiment=cifar10_finetune", f"backbone={backbone}",
                        "architecture=resnet10", f"paths.datasets.cifar10={tmp_path}") == "imagenet"


def test_auto_stem_follows_the_backbone_a_stage_starts_from(compose_cfg, tmp_path):
    backbone = backbone_file(tmp_path, "cifar")
    assert settled_stem(compose_cfg, "stage=probe", f"stage.init={backbone}", "architecture=resnet10",
                        "architecture.stem=auto", "stage.resolution=224") == "cifar"


def test_a_stem_contradicting_the_backbone_is_refused_in_one_line(compose_cfg, tmp_path):
    backbone = backbone_file(tmp_path, "imagenet")
    with pytest.raises(S3LError, match=r"architecture.stem=cifar .* but the backbone .* has the imagenet stem: "
                                       r"pass architecture.stem=auto"):
        settled_stem(compose_cfg, "stage=knn", f"stage.init={backbone}", "architecture=resnet10",
                     "architecture.stem=cifar", "stage.resolution=32")
