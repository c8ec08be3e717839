"""`python -m s3l.subsets`: seeded draws by each rule, the test split kept, links written, the list round-trips."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from s3l.data.datasets import ImageFolderSplit
from s3l.errors import S3LError
from s3l.subsets import balanced_quotas, build_subset, by_class, read_source, select
from tests.conftest import CUB_SUBSET, HYMENOPTERA, ROOT, run_train

# The e2e run's overrides: 10 training images hold a batch of 4 and a queue of 4 (K < images - batch).
TINY_PRETRAIN = ["stage=pretrain", "dataset=imagefolder", "debug=tiny", "architecture=resnet10", "resolution=16",
                 "dataset.num_workers=0", "method.batch_size=4", "method.K=4"]


@pytest.fixture(scope="module")
def hymenoptera():
    """Class -> sorted relative paths of the hymenoptera folder's train and test splits (ants, bees)."""
    _, datasets = read_source(str(HYMENOPTERA))
    return by_class(datasets["train"]), by_class(datasets["test"])


@pytest.fixture(scope="module")
def cub():
    """The same for the 10-class CUB subset in its official layout."""
    _, datasets = read_source(str(CUB_SUBSET))
    return by_class(datasets["train"]), by_class(datasets["test"])


def counts(chosen: dict[str, list[str]]) -> dict[str, int]:
    return {name: len(paths) for name, paths in chosen.items()}


def test_the_same_seed_draws_the_same_subset_and_another_seed_a_different_one(hymenoptera):
    first, again, other = (select(*hymenoptera, "per_class", 5, "same", seed) for seed in (0, 0, 1))
    assert first == again
    assert first["train"] != other["train"] and first["test"] != other["test"]


def test_per_class_draws_n_of_every_class_and_keeps_the_whole_test_split(cub):
    train, test = cub
    chosen = select(train, test, "per_class", 7, "all", 0)
    assert counts(chosen["train"]) == dict.fromkeys(train, 7)
    assert chosen["test"] == test
    assert all(set(chosen["train"][name]) <= set(train[name]) for name in train)


def test_a_subset_never_lists_a_file_the_project_reader_skips(hymenoptera):
    train, _ = hymenoptera
    assert len(train["ants"]) == 123  # 124 files, the placeholder GIF left out
    chosen = select(*hymenoptera, "fraction", 1.0, "all", 0)
    assert chosen["train"]["ants"] == train["ants"] and "ants/imageNotFound.gif" not in train["ants"]


def test_total_spreads_the_images_as_evenly_as_the_class_sizes_allow(hymenoptera):
    assert sorted(counts(select(*hymenoptera, "total", 7, "all", 0)["train"]).values()) == [3, 4]
    rng = np.random.default_rng(0)
    sizes = {"small": 2, "big": 10, "bigger": 10}
    assert balanced_quotas(sizes, 12, rng) == {"small": 2, "big": 5, "bigger": 5}
    assert sorted(balanced_quotas(sizes, 13, rng).values()) == [2, 5, 6]
    assert balanced_quotas(sizes, 22, rng) == sizes
    assert balanced_quotas(sizes, 3, rng) == {"small": 1, "big": 1, "bigger": 1}


def test_total_leaves_out_classes_it_cannot_reach_and_their_test_images(cub):
    chosen = select(*cub, "total", 4, "all", 0)
    assert counts(chosen["train"]) == dict.fromkeys(chosen["train"], 1) and len(chosen["train"]) == 4
    assert set(chosen["test"]) == set(chosen["train"])


def test_classes_keeps_whole_classes(cub):
    train, test = cub
    chosen = select(train, test, "classes", 3, "same", 0)
    assert len(chosen["train"]) == 3
    assert chosen["train"] == {name: train[name] for name in chosen["train"]}
    assert chosen["test"] == {name: test[name] for name in chosen["train"]}


def test_fraction_keeps_that_share_of_every_class_in_both_splits_with_val_same(cub):
    train, test = cub
    chosen = select(train, test, "fraction", 0.25, "same", 0)
    assert counts(chosen["train"]) == {name: round(0.25 * len(paths)) for name, paths in train.items()}
    assert counts(chosen["test"]) == {name: round(0.25 * len(paths)) for name, paths in test.items()}


@pytest.mark.parametrize(("rule", "value", "message"), [
    ("per_class", 0, "--per-class must be at least 1, got 0"),
    ("per_class", 31, "--per-class asks for 31 but there are only 30 usable training images in class '001."),
    ("classes", 11, "--classes asks for 11 but there are only 10 usable classes"),
    ("total", 301, "--total asks for 301 but there are only 300 usable training images"),
])
def test_a_rule_asking_for_more_than_there_is_or_less_than_one_is_refused(cub, rule, value, message):
    with pytest.raises(S3LError, match="^" + message.replace(".", r"\.").replace("-", r"\-")):
        select(*cub, rule, value, "all", 0)


def test_a_built_subset_is_links_not_copies_and_rebuilds_from_its_list(tmp_path):
    line = build_subset(str(HYMENOPTERA), str(tmp_path / "a"), "per_class", 5, 0, "all", False)
    record = json.loads((tmp_path / "a" / "subset.json").read_text())
    files = [path for path in (tmp_path / "a").rglob("*") if path.suffix.lower() in (".jpg", ".jpeg")]
    assert len(files) == 10 + 153 and "10 train + 153 val images of 2 classes" in line
    assert all(path.is_symlink() or path.stat().st_nlink > 1 for path in files)
    assert ("hard links" in line) == all(path.stat().st_nlink > 1 for path in files)
    for split, folder in (("train", "train"), ("test", "val")):
        written = ImageFolderSplit(str(tmp_path / "a"), split, "fail")
        listed = [[path.relative_to(written.base).as_posix(), written.classes[label]]
                  for path, label in written.samples]
        assert sorted(listed) == record["splits"][split]
        assert (tmp_path / "a" / folder).is_dir()
    rule, value = next(iter(record["rule"].items()))
    build_subset(record["source"], str(tmp_path / "b"), rule, value, record["seed"], record["val"], False)
    assert json.loads((tmp_path / "b" / "subset.json").read_text()) == record


def test_copy_writes_independent_files(tmp_path):
    line = build_subset(str(CUB_SUBSET), str(tmp_path / "c"), "total", 5, 0, "same", True)
    files = [path for path in (tmp_path / "c").rglob("*.jpg")]
    assert len(files) == 10 and "as 10 copies" in line
    assert all(not path.is_symlink() and path.stat().st_nlink == 1 for path in files)


def test_bad_input_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("")
    with pytest.raises(S3LError, match="exists and is not an empty folder"):
        build_subset(str(HYMENOPTERA), str(tmp_path / "taken"), "per_class", 1, 0, "all", False)
    with pytest.raises(S3LError, match="has neither CUB_200_2011/"):
        build_subset(str(tmp_path), str(tmp_path / "out"), "per_class", 1, 0, "all", False)
    with pytest.raises(S3LError, match=r"--fraction must be in \(0, 1\], got 1.5"):
        build_subset(str(HYMENOPTERA), str(tmp_path / "out"), "fraction", 1.5, 0, "all", False)
    assert not (tmp_path / "out").exists()


def run_subsets(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "s3l.subsets", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_the_command_says_what_is_wrong_in_one_line_and_exits_2(tmp_path):
    proc = run_subsets(str(tmp_path / "missing"), str(tmp_path / "out"), "--total", "5")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [f"error: source '{tmp_path / 'missing'}' does not exist or is not a folder"]


@pytest.mark.slow
def test_pretraining_runs_on_a_built_subset_and_on_the_same_list_in_place(tmp_path):
    proc = run_subsets(str(HYMENOPTERA), str(tmp_path / "hym5"), "--per-class", "5", "--seed", "0")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("built 10 train + 153 val images of 2 classes (per_class=5, seed 0, val all)")
    assert len(proc.stdout.splitlines()) == 1
    built = run_train([*TINY_PRETRAIN, f"dataset.root={tmp_path / 'hym5'}"], tmp_path / "built")
    assert built.returncode == 0, built.output[-3000:]
    built_stage = built.results()["stages"][0]
    assert built_stage["dataset"] == {"name": "imagefolder", "metric": "top1", "subset": None}

    listed = tmp_path / "hym5" / "subset.json"
    in_place = run_train([*TINY_PRETRAIN, f"dataset.root={HYMENOPTERA}", f"dataset.subset={listed}"],
                         tmp_path / "in_place")
    assert in_place.returncode == 0, in_place.output[-3000:]
    in_place_stage = in_place.results()["stages"][0]
    sha256 = json.loads(listed.read_text())["sha256"]
    assert in_place_stage["dataset"] == {"name": "imagefolder", "metric": "top1", "subset": {"path": str(listed), "sha256": sha256}}
    # The same images in the same order and the same seed: the same pretraining, so the same kNN accuracy.
    assert in_place_stage["metrics"]["knn_top1"] == built_stage["metrics"]["knn_top1"]
