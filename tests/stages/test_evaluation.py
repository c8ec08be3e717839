"""The evaluation stages on the embedded digits, run in-process as the chain runs them."""

import json

import numpy as np
import pytest
import torch

from s3l.config import stage_specs
from s3l.errors import S3LError
from s3l.evaluation.embedding import load_features
from s3l.evaluation.kshot import kshot_indices
from s3l.stages.base import build_stage
from s3l.stages.build import build_datasets
from s3l.validate import validate_config


@pytest.fixture(scope="module")
def digits():
    from tests.conftest import compose_config

    return build_datasets(compose_config(["dataset=digits"], "/tmp"))


def run_stage(compose_cfg, tmp_path, digits, stage: str, *overrides: str) -> dict:
    cfg = compose_cfg(f"stage={stage}", "stage.init=null", "architecture=resnet10", "stage.resolution=16",
                      "dataset.num_workers=0", *overrides)
    (spec,) = stage_specs(cfg)
    validate_config(cfg, [spec])  # as the chain does: settles architecture.stem=auto (cifar at 16 px)
    stage_dir = tmp_path / f"{stage}_{abs(hash(overrides))}"
    result = build_stage(cfg, spec).run(stage_dir, None, digits)
    assert json.loads((stage_dir / "results.json").read_text()) == result
    return result


def test_probe_scores_every_resnet_stage_and_heads_the_deepest(compose_cfg, tmp_path, digits):
    result = run_stage(compose_cfg, tmp_path, digits, "probe", "stage.epochs=20")
    m = result["metrics"]
    assert m["stages"] == ["conv2", "conv3", "conv4", "conv5"]
    assert all(0.5 < m[f"{s}/top1"] <= 1 for s in m["stages"])  # random conv features separate digits well
    assert m["score"] == m["conv5/score"] == m["conv5/top1"]
    assert result["kind"] == "probe" and result["init"] == "random" and result["cost"]["embedded_images"] == 1797


def test_kshot_is_identical_for_a_seed_and_differs_across_seeds(compose_cfg, tmp_path, digits):
    settings = ("stage.shots=[1,3]", "stage.seeds=[0,1,2]", "stage.epochs=20")
    first = run_stage(compose_cfg, tmp_path, digits, "kshot", *settings)["metrics"]
    again = run_stage(compose_cfg, tmp_path, digits, "kshot", *settings, "stage.batch_size=128")["metrics"]
    other = run_stage(compose_cfg, tmp_path, digits, "kshot", "stage.shots=[1,3]", "stage.seeds=[3,4,5]",
                      "stage.epochs=20")["metrics"]
    assert first == again
    assert first["1shot/runs"] != other["1shot/runs"]
    runs = np.array(first["3shot/runs"])
    assert first["3shot/mean"] == pytest.approx(runs.mean()) and first["3shot/std"] == pytest.approx(runs.std(ddof=1))
    assert first["score"] == first["3shot/mean"]
    labels = torch.tensor(digits[0].targets)
    chosen = kshot_indices(labels, 3, seed=0)
    assert torch.bincount(labels[chosen]).tolist() == [3] * 10


def test_knn_stage_scores_the_final_features(compose_cfg, tmp_path, digits):
    m = run_stage(compose_cfg, tmp_path, digits, "knn")["metrics"]
    assert 0.5 < m["top1"] <= 1 and m["score"] == m["top1"]


def test_features_stage_writes_the_embeddings_and_a_map(compose_cfg, tmp_path, digits):
    m = run_stage(compose_cfg, tmp_path, digits, "features", "stage.max_points=200")["metrics"]
    saved = load_features(m["features"])
    assert saved.train_features.shape == (1437, 512) and saved.test_features.shape == (360, 512)
    assert list(saved.train_labels) == digits[0].targets
    with open(m["embedding"], "rb") as png:
        assert png.read(8) == b"\x89PNG\r\n\x1a\n"


def test_a_multilabel_dataset_is_refused_by_kshot_before_any_image(compose_cfg):
    cfg = compose_cfg("stage=kshot", "stage.init=null", "dataset=voc2007", "paths.datasets.voc2007=/nowhere")
    with pytest.raises(S3LError, match="needs one label per image, but dataset=voc2007 is multi-label"):
        build_stage(cfg, stage_specs(cfg)[0]).check_config()
