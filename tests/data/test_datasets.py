"""Datasets on the real CUB subset and hymenoptera copies (../shared/datasets), plus sklearn digits."""

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from s3l.data.datasets import CUB200, Digits, ImageFolderSplit, build_dataset
from s3l.errors import S3LError

DATASETS = Path(__file__).resolve().parents[3] / "shared" / "datasets"
CUB_PARENT = DATASETS / "cub_200_2011_10cls"
CUB = CUB_PARENT / "CUB_200_2011"
HYMENOPTERA = DATASETS / "hymenoptera_data"
GRAYSCALE_IMAGE = "009.Brewer_Blackbird/Brewer_Blackbird_0028_2682.jpg"
ARCHIVE_URL = "https://data.caltech.edu/records/65de6-vp158"


@pytest.fixture(scope="module")
def cub_train():
    return CUB200(str(CUB), "train", "fail")


@pytest.fixture(scope="module")
def cub_test():
    return CUB200(str(CUB), "test", "fail")


def _official_split(flag: str) -> list[str]:
    """Relative paths of the images.txt entries whose train_test_split.txt flag is `flag`, read directly."""
    ids = dict(line.split() for line in (CUB / "train_test_split.txt").read_text().splitlines())
    return [
        path
        for image_id, path in (line.split() for line in (CUB / "images.txt").read_text().splitlines())
        if ids[image_id] == flag
    ]


def _relative(dataset) -> list[tuple[str, int]]:
    return sorted((f"{path.parent.name}/{path.name}", label) for path, label in dataset.samples)


def _link_folders(root: Path, folders: dict[str, list[str]]) -> None:
    """Lay CUB images out as root/<split folder>/<class>/<file> symlinks."""
    for folder, relative_paths in folders.items():
        for relative in relative_paths:
            link = root / folder / relative
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(CUB / "images" / relative)


def _truncated_copy(source: Path, target: Path) -> None:
    data = source.read_bytes()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data[: len(data) // 2])


def test_cub_official_layout_gives_official_split_sizes(cub_train, cub_test):
    assert len(cub_train) == len(_official_split("1")) == 300
    assert len(cub_test) == len(_official_split("0")) == 243
    assert len(cub_train.targets) == 300


def test_cub_classes_are_the_ten_names_from_classes_txt(cub_train, cub_test):
    assert cub_train.classes == cub_test.classes
    assert len(cub_train.classes) == 10
    assert cub_train.classes[0] == "001.Black_footed_Albatross"
    assert cub_train.classes[9] == "010.Red_winged_Blackbird"


def test_cub_labels_follow_class_ids_in_both_splits(cub_train, cub_test):
    for dataset in (cub_train, cub_test):
        # Class folders are "001." .. "010.", so the label is the folder's number minus one.
        expected = [int(path.parent.name[:3]) - 1 for path, _ in dataset.samples]
        assert dataset.targets == expected
        assert sorted(set(dataset.targets)) == list(range(10))


def test_cub_accepts_parent_of_cub_folder(cub_train):
    assert _relative(CUB200(str(CUB_PARENT), "train", "fail")) == _relative(cub_train)


def test_cub_grayscale_image_comes_back_rgb(cub_train, cub_test):
    with Image.open(CUB / "images" / GRAYSCALE_IMAGE) as original:
        assert original.mode == "L"
        size, pixels = original.size, np.asarray(original)
    dataset = cub_train if any(str(p).endswith(GRAYSCALE_IMAGE) for p, _ in cub_train.samples) else cub_test
    index = next(i for i, (p, _) in enumerate(dataset.samples) if str(p).endswith(GRAYSCALE_IMAGE))
    image, label = dataset[index]
    assert image.mode == "RGB" and image.size == size
    assert label == 8
    rgb = np.asarray(image)
    assert np.array_equal(rgb[..., 0], pixels) and np.array_equal(rgb[..., 2], pixels)


def test_cub_folder_layout_matches_official_layout(tmp_path, cub_train, cub_test):
    _link_folders(tmp_path, {"train": _official_split("1"), "val": _official_split("0")})
    train = CUB200(str(tmp_path), "train", "fail")
    test = CUB200(str(tmp_path), "test", "fail")
    assert (len(train), len(test)) == (300, 243)
    assert train.classes == cub_train.classes
    assert _relative(train) == _relative(cub_train)
    assert _relative(test) == _relative(cub_test)


def test_folder_layout_accepts_test_folder_instead_of_val(tmp_path):
    _link_folders(tmp_path, {"train": _official_split("1")[:20], "test": _official_split("0")[:7]})
    assert len(ImageFolderSplit(str(tmp_path), "test", "fail")) == 7


def test_cub_relabels_only_the_class_ids_present(tmp_path):
    # A partial copy holding classes 3 and 7 only: labels 0 and 1, names from classes.txt.
    for name in ("train_test_split.txt", "image_class_labels.txt", "classes.txt"):
        shutil.copy(CUB / name, tmp_path / name)
    lines = [
        line
        for line in (CUB / "images.txt").read_text().splitlines()
        if line.split()[1][:3] in ("003", "007")
    ]
    (tmp_path / "images.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "images").symlink_to(CUB / "images")
    train = CUB200(str(tmp_path), "train", "fail")
    assert train.classes == ["003.Sooty_Albatross", "007.Parakeet_Auklet"]
    assert train.targets == [0 if path.parent.name.startswith("003") else 1 for path, _ in train.samples]
    test = CUB200(str(tmp_path), "test", "fail")
    assert len(train) + len(test) == len(lines)


def test_missing_root_names_path_files_and_archive(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(S3LError) as error:
        CUB200(str(missing), "train", "fail")
    message = str(error.value)
    assert str(missing) in message and "images.txt" in message and ARCHIVE_URL in message
    assert "\n" not in message


def test_root_with_neither_layout_lists_what_is_expected(tmp_path):
    (tmp_path / "notes.txt").write_text("not a dataset")
    with pytest.raises(S3LError, match="neither") as error:
        CUB200(str(tmp_path), "train", "fail")
    assert "train/" in str(error.value) and "classes.txt" in str(error.value)


def test_partial_official_layout_names_missing_files(tmp_path):
    shutil.copy(CUB / "images.txt", tmp_path / "images.txt")
    with pytest.raises(
        S3LError, match="lacks train_test_split.txt, image_class_labels.txt, classes.txt, images/"
    ):
        CUB200(str(tmp_path), "train", "fail")


def test_hymenoptera_skip_drops_placeholder_gif(caplog):
    gif = HYMENOPTERA / "train" / "ants" / "imageNotFound.gif"
    with caplog.at_level(logging.WARNING, logger="s3l.data"):
        train = ImageFolderSplit(str(HYMENOPTERA), "train", "skip")
    assert train.skipped == [gif]
    assert [record.getMessage().count("imageNotFound.gif") for record in caplog.records] == [1]
    files = [p for p in (HYMENOPTERA / "train").glob("*/*") if p.name != "imageNotFound.gif"]
    assert len(train) == len(files) == 244
    assert train.classes == ["ants", "bees"]
    assert gif not in [path for path, _ in train.samples]


def test_hymenoptera_fail_names_placeholder_gif():
    with pytest.raises(S3LError, match=r"imageNotFound\.gif.*bad_images=skip"):
        ImageFolderSplit(str(HYMENOPTERA), "train", "fail")


def test_hymenoptera_val_counts_per_class():
    val = ImageFolderSplit(str(HYMENOPTERA), "test", "fail")
    assert np.bincount(val.targets).tolist() == [70, 83]
    image, _ = val[0]
    assert image.mode == "RGB"


def test_truncated_jpeg_is_detected(tmp_path):
    relatives = _official_split("1")[:2]
    _link_folders(tmp_path, {"train": relatives})
    truncated = tmp_path / "train" / relatives[0].split("/")[0] / "truncated.jpg"
    _truncated_copy(CUB / "images" / relatives[0], truncated)
    with pytest.raises(S3LError, match="truncated.jpg"):
        ImageFolderSplit(str(tmp_path), "train", "fail")
    train = ImageFolderSplit(str(tmp_path), "train", "skip")
    assert train.skipped == [truncated]
    assert len(train) == 2


def test_split_with_only_bad_images_raises(tmp_path):
    _truncated_copy(CUB / "images" / _official_split("1")[0], tmp_path / "train" / "bird" / "a.jpg")
    with pytest.raises(S3LError, match=r"split 'train'.*no usable images \(1 found, none usable"):
        ImageFolderSplit(str(tmp_path), "train", "skip")


def test_empty_split_raises_naming_root_and_split(tmp_path):
    (tmp_path / "train" / "bird").mkdir(parents=True)
    (tmp_path / "val" / "bird").mkdir(parents=True)
    with pytest.raises(S3LError, match=f"split 'test' at '{tmp_path / 'val'}' has no usable images"):
        ImageFolderSplit(str(tmp_path), "test", "skip")


def test_missing_val_folder_raises(tmp_path):
    (tmp_path / "train" / "bird").mkdir(parents=True)
    with pytest.raises(S3LError, match="no val/ or test/ folder for split 'test'"):
        ImageFolderSplit(str(tmp_path), "test", "fail")


def test_missing_train_folder_raises_even_for_test_split(tmp_path):
    (tmp_path / "val" / "bird").mkdir(parents=True)
    with pytest.raises(S3LError, match="has no train/ folder"):
        ImageFolderSplit(str(tmp_path), "test", "fail")


def test_test_class_unknown_to_train_raises(tmp_path):
    _link_folders(tmp_path, {"train": _official_split("1")[:1], "val": _official_split("0")[-1:]})
    with pytest.raises(S3LError, match="no counterpart"):
        ImageFolderSplit(str(tmp_path), "test", "fail")


def test_extensions_are_case_insensitive_and_other_files_ignored(tmp_path):
    source = CUB / "images" / _official_split("1")[0]
    folder = tmp_path / "train" / "bird"
    folder.mkdir(parents=True)
    shutil.copy(source, folder / "upper.JPG")
    Image.open(source).save(folder / "as.png")
    (folder / "notes.txt").write_text("not an image")
    train = ImageFolderSplit(str(tmp_path), "train", "fail")
    assert sorted(path.name for path, _ in train.samples) == ["as.png", "upper.JPG"]
    assert train.skipped == []


def test_digits_split_is_stratified_80_20_and_deterministic():
    digits = load_digits()
    _, expected_test = train_test_split(
        np.arange(1797), test_size=0.2, random_state=0, stratify=digits.target
    )
    train, test = Digits("train", 32), Digits("test", 32)
    assert (len(train), len(test)) == (1437, 360)
    assert test.targets == digits.target[expected_test].tolist()
    assert Digits("test", 32).targets == test.targets
    assert train.classes == [str(d) for d in range(10)]


def test_digits_images_are_scaled_rgb():
    digits = load_digits()
    _, expected_test = train_test_split(
        np.arange(1797), test_size=0.2, random_state=0, stratify=digits.target
    )
    image, label = Digits("test", image_size=8)[0]
    assert image.mode == "RGB" and image.size == (8, 8)
    expected = np.round(digits.images[expected_test[0]] * 255 / 16)
    assert np.array_equal(np.asarray(image)[..., 1], expected)
    assert label == digits.target[expected_test[0]]
    assert Digits("train", image_size=32)[0][0].size == (32, 32)


def test_build_dataset_dispatches_on_name():
    assert isinstance(build_dataset("digits", None, "train", "skip"), Digits)
    assert isinstance(build_dataset("imagefolder", str(HYMENOPTERA), "test", "fail"), ImageFolderSplit)


def test_build_dataset_rejects_unknown_name_and_missing_root():
    with pytest.raises(S3LError, match="cub200, imagefolder, digits"):
        build_dataset("cifar10", None, "train", "skip")
    with pytest.raises(S3LError, match="dataset.root is not set"):
        build_dataset("cub200", None, "train", "skip")


def test_unknown_bad_images_policy_raises():
    with pytest.raises(S3LError, match="skip, fail"):
        ImageFolderSplit(str(HYMENOPTERA), "train", "ignore")
