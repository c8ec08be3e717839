"""`dataset.subset`: a subset.json applied in place keeps exactly its listed files, and is part of the cache key."""

import json

import pytest

from s3l.data.cache import cache_key
from s3l.data.datasets import CUB200, ImageFolderSplit
from s3l.data.subset import list_sha256, read_subset
from s3l.errors import S3LError
from s3l.subsets import build_subset
from tests.conftest import CUB_SUBSET, HYMENOPTERA


def listed_files(dataset) -> list[list[str]]:
    """The dataset's samples as subset.json lists them: sorted [path relative to its base, class name]."""
    return sorted([path.relative_to(dataset.base).as_posix(), dataset.classes[label]]
                  for path, label in dataset.samples)


@pytest.mark.parametrize(("name", "root", "rule", "value"), [
    ("imagefolder", HYMENOPTERA, "total", 9),
    ("cub200", CUB_SUBSET, "classes", 3),
])
def test_a_subset_in_place_reads_exactly_the_listed_files(tmp_path, name, root, rule, value):
    build_subset(str(root), str(tmp_path / "subset"), rule, value, 0, "same", False)
    path = str(tmp_path / "subset" / "subset.json")
    record = json.loads((tmp_path / "subset" / "subset.json").read_text())
    for split in ("train", "test"):
        dataset = {"imagefolder": ImageFolderSplit, "cub200": CUB200}[name](str(root), split, "fail", subset=path)
        assert listed_files(dataset) == record["splits"][split]
        assert dataset.classes == sorted({name for _, name in record["splits"]["train"]})
        assert dataset.subset.record() == {"path": path, "sha256": record["sha256"]}
        # The same labels as the subset materialised as class folders.
        materialised = ImageFolderSplit(str(tmp_path / "subset"), split, "fail")
        assert dataset.targets == materialised.targets and dataset.classes == materialised.classes


def write_subset(path, train, test, **extra) -> str:
    path.write_text(json.dumps({"splits": {"train": train, "test": test}, **extra}))
    return str(path)


def test_a_hand_written_list_needs_no_sha256_but_a_stale_one_is_refused(tmp_path):
    train, test = [["ants/0013035.jpg", "ants"]], [["ants/10308379_1b6c72e180.jpg", "ants"]]
    dataset = ImageFolderSplit(str(HYMENOPTERA), "train", "fail",
                            subset=write_subset(tmp_path / "hand.json", train, test))
    assert listed_files(dataset) == train and dataset.classes == ["ants"]
    assert dataset.subset.sha256 == list_sha256({"train": train, "test": test})
    stale = write_subset(tmp_path / "stale.json", train, test, sha256="0" * 64)
    with pytest.raises(S3LError, match="states sha256 0+ but its lists hash to .*: the lists were edited"):
        read_subset(stale)


@pytest.mark.parametrize(("train", "message"), [
    ([["ants/no_such.jpg", "ants"]], "lists train image 'ants/no_such.jpg' of class 'ants', which is not in it"),
    ([["ants/0013035.jpg", "bees"]], "lists train image 'ants/0013035.jpg' of class 'bees', which is of class 'ants'"),
])
def test_a_listed_file_the_dataset_lacks_or_files_elsewhere_is_one_error(tmp_path, train, message):
    subset = write_subset(tmp_path / "subset.json", train, [])
    with pytest.raises(S3LError, match=message):
        ImageFolderSplit(str(HYMENOPTERA), "train", "fail", subset=subset)


def test_a_file_that_is_no_subset_list_is_one_error(tmp_path):
    (tmp_path / "list.json").write_text('{"splits": {"train": ["ants/0013035.jpg"]}}')
    with pytest.raises(S3LError, match="has no 'splits' with 'train' and 'test' lists of \\[path, class\\] pairs"):
        read_subset(str(tmp_path / "list.json"))
    with pytest.raises(S3LError, match="cannot be read as JSON"):
        read_subset(str(tmp_path / "missing.json"))


def test_two_subsets_never_share_a_cache_even_with_the_same_files(tmp_path):
    train = [["ants/0013035.jpg", "ants"], ["bees/16838648_415acd9e3f.jpg", "bees"]]
    first = write_subset(tmp_path / "first.json", train, [])
    second = write_subset(tmp_path / "second.json", train, [["ants/10308379_1b6c72e180.jpg", "ants"]])
    keys = [cache_key(ImageFolderSplit(str(HYMENOPTERA), "train", "fail", subset=subset), 32)
            for subset in (first, second, first)]
    assert keys[0] != keys[1] and keys[0] == keys[2]


def test_a_list_edited_in_place_is_another_stage_identity_but_the_nan_check_interval_is_not(tmp_path, compose_cfg):
    from s3l.config import stage_config_hash, stage_specs

    train = [["ants/0013035.jpg", "ants"]]
    path = write_subset(tmp_path / "list.json", train, [])

    def stage_hash(*overrides: str) -> str:
        cfg = compose_cfg("dataset=imagefolder", f"dataset.root={HYMENOPTERA}", f"dataset.subset={path}",
                          "stage=pretrain", *overrides)
        return stage_config_hash(cfg, stage_specs(cfg)[0])

    before = stage_hash()
    assert stage_hash("trainer.check_finite_every_n_steps=50") == before  # how often we look changes no result
    write_subset(tmp_path / "list.json", [*train, ["bees/16838648_415acd9e3f.jpg", "bees"]], [])
    assert stage_hash() != before  # same path, other images: a finished stage must not be reused
