"""The ImageNet experiments end to end on a fake ImageNet (the standard train/<wnid>/*.JPEG + val/<wnid>/*.JPEG
layout, 3 classes of generated noise JPEGs), with tiny limits: full-ImageNet pretraining -> linear evaluation, and
small-ImageNet pretraining on a subset built by `python -m s3l.subsets`."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

WNIDS = ["n01440764", "n01443537", "n01484850"]  # tench, goldfish, great white shark
# Tiny: a small net at 16 px pretraining / 32 px evaluation, one epoch of at most 2 batches per stage.
TINY = ["debug=tiny", "architecture=resnet10", "resolution=16", "dataset.eval_resolution=32", "dataset.num_workers=0"]


@pytest.fixture
def fake_imagenet(tmp_path):
    """root/train/<wnid>/<wnid>_<i>.JPEG (6 per class) and root/val/<wnid>/ILSVRC2012_val_<n>.JPEG (3 per class)."""
    root = tmp_path / "imagenet"
    rng = np.random.default_rng(0)
    number = 0
    for wnid in WNIDS:
        for split, count in (("train", 6), ("val", 3)):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(count):
                number += 1
                name = f"{wnid}_{i}.JPEG" if split == "train" else f"ILSVRC2012_val_{number:08d}.JPEG"
                pixels = rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / name, format="JPEG")
    return root


def test_imagenet_112_recipe_pretrains_then_runs_the_linear_evaluation(train, fake_imagenet):
    # 18 training images: a queue of 8 behind batches of 4 (K < images - batch, K a multiple of the batch).
    run = train(["experiment=imagenet_112_mocov2", f"paths.datasets.imagenet={fake_imagenet}", *TINY,
                 "method.batch_size=4", "method.K=8"])
    assert run.returncode == 0, run.output[-3000:]
    results = run.results()
    assert results["name"] == "imagenet_112_mocov2" and results["dataset"] == "imagenet"
    assert results["chain"] == ["pretrain", "linear"]
    pretrain, linear = results["stages"]
    assert pretrain["resolution"] == 16 and linear["resolution"] == 32
    assert linear["skipped_images"] == {"train": 0, "test": 0}
    assert 0.0 <= linear["metrics"]["top1_last"] <= 1.0
    assert (run.run_dir() / "1_linear" / "results.json").is_file()


def test_small_imagenet_pretrains_on_a_subset_built_by_s3l_subsets(train, fake_imagenet, tmp_path):
    out = tmp_path / "smallimagenet_n2"
    built = subprocess.run([sys.executable, "-m", "s3l.subsets", str(fake_imagenet), str(out), "--per-class", "2",
                            "--seed", "0"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert built.returncode == 0, built.stderr
    assert built.stdout.startswith("built 6 train + 9 val images of 3 classes (per_class=2, seed 0, val all)")
    subset = out / "subset.json"
    # 6 training images: batches of 2 and a queue of 2.
    run = train(["experiment=smallimagenet_n10_112_mocov2", f"paths.datasets.imagenet={fake_imagenet}",
                 f"subset={subset}", *TINY, "method.batch_size=2", "method.K=2"])
    assert run.returncode == 0, run.output[-3000:]
    results = run.results()
    assert results["chain"] == ["pretrain"] and results["dataset"] == "imagenet"
    (pretrain,) = results["stages"]
    assert pretrain["dataset"]["subset"]["path"] == str(subset)
    assert pretrain["cost"]["train_images"] > 0
    assert (run.run_dir() / "0_pretrain" / "backbone.pt").is_file()


def test_small_imagenet_without_a_subset_stops_with_one_line(train, fake_imagenet):
    run = train(["experiment=smallimagenet_total50k_112_mocov2", f"paths.datasets.imagenet={fake_imagenet}", *TINY])
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == (
        "error: subset is required by this experiment and not set: pass subset=... (the subset.json that "
        "`python -m s3l.subsets` writes beside the subset it builds)")
    assert "Traceback" not in run.output
