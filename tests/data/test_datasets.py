"""Datasets on the real CUB subset and hymenoptera copies (../shared/datasets), plus sklearn digits."""

import json
import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from s3l.data.datasets import CUB200, Digits, ImageFolderSplit, build_dataset, check_dataset_config
from s3l.errors import S3LError

DATASETS = Path(__file__).resolve().parents[3] / "shared" / "datasets"
CUB_PARENT = DATASETS / "cub_200_2011_10cls"
CUB = CUB_PARENT / "CUB_200_2011"
HYMENOPTERA = DATASETS / "hymenoptera_data"
GRAYSCALE_IMAGE = "009.Brewer_Blackbird/Brewer_Blackbird_0028_2682.jpg"
ARCHIVE_URL = "https://data.caltech.edu/records/65de6-vp158"
TINY_CUB = {  # image id: (path under images/, split flag 1 = train / 0 = test, class id)
    1: ("001.Albatross/a1.png", "1", 1),
    2: ("001.Albatross/a2.png", "0", 1),
    3: ("002.Auklet/b1.png", "1", 2),
    4: ("002.Auklet/b2.png", "0", 2),
}
TINY_CUB_FILES = ("images.txt", "train_test_split.txt", "image_class_labels.txt", "classes.txt")
UNDECODABLE = os.fsdecode(b"bad\xff.jpg")  # how Linux hands Python a file name that is not UTF-8


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


def test_build_dataset_builds_the_target_with_the_settings_its_class_declares():
    digits = OmegaConf.create({"_target_": "s3l.data.datasets.Digits", "name": "digits", "image_size": 8,
                               "num_workers": 2})
    assert isinstance(build_dataset(digits, "train"), Digits) and build_dataset(digits, "test")[0][0].size == (8, 8)
    folder = OmegaConf.create({"_target_": "s3l.data.datasets.ImageFolderSplit", "name": "imagefolder",
                               "root": str(HYMENOPTERA), "bad_images": "fail", "subset": None, "cache": False})
    assert isinstance(build_dataset(folder, "test"), ImageFolderSplit)


def test_dataset_config_checks_name_the_setting_to_change():
    with pytest.raises(S3LError, match="dataset._target_=s3l.data.nowhere.Cars cannot be imported"):
        check_dataset_config(OmegaConf.create({"_target_": "s3l.data.nowhere.Cars", "name": "cars"}))
    with pytest.raises(S3LError, match="dataset.root is not set for dataset=cub200: pass paths.datasets.cub200="):
        check_dataset_config(OmegaConf.create({"_target_": "s3l.data.datasets.CUB200", "name": "cub200",
                                               "root": None}))
    with pytest.raises(S3LError, match="dataset.resident=true loads .* not dataset=digits: set dataset.resident=false"):
        check_dataset_config(OmegaConf.create({"_target_": "s3l.data.datasets.Digits", "name": "digits",
                                               "resident": True}))


def test_unknown_bad_images_policy_raises():
    with pytest.raises(S3LError, match="skip, fail"):
        ImageFolderSplit(str(HYMENOPTERA), "train", "ignore")


def _photo(path: Path, colour: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path, format="PNG")
    return path


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n")


def _append_line(path: Path, line: str) -> int:
    """Append `line` to the text file `path` and return its line number."""
    lines = path.read_text().splitlines() + [line]
    _write_lines(path, lines)
    return len(lines)


def _tiny_cub(root: Path, rows: dict = TINY_CUB) -> Path:
    """A generated CUB copy in the official layout (default: 2 classes of 1 train + 1 test image)."""
    for relative, _, _ in rows.values():
        _photo(root / "images" / relative)
    _write_lines(root / "images.txt", [f"{i} {relative}" for i, (relative, _, _) in rows.items()])
    _write_lines(root / "train_test_split.txt", [f"{i} {flag}" for i, (_, flag, _) in rows.items()])
    _write_lines(root / "image_class_labels.txt", [f"{i} {class_id}" for i, (_, _, class_id) in rows.items()])
    _write_lines(root / "classes.txt", ["1 001.Albatross", "2 002.Auklet"])
    return root


def test_tiny_cub_joins_its_files_on_id(tmp_path):
    train = CUB200(str(_tiny_cub(tmp_path)), "train", "fail")
    images = tmp_path / "images"
    assert train.samples == [(images / "001.Albatross/a1.png", 0), (images / "002.Auklet/b1.png", 1)]
    assert train.classes == ["001.Albatross", "002.Auklet"]


@pytest.mark.parametrize("listed", ["{outside}", "../outside.png", "001.Albatross/../../outside.png"])
def test_images_txt_path_leaving_images_names_file_and_line(tmp_path, listed):
    _tiny_cub(tmp_path / "cub")
    outside = _photo(tmp_path / "outside.png")
    number = _append_line(tmp_path / "cub" / "images.txt", "5 " + listed.format(outside=outside))
    expected = rf"images\.txt' line {number} names .* not a path inside images/"
    with pytest.raises(S3LError, match=expected) as error:
        CUB200(str(tmp_path / "cub"), "train", "fail")
    assert "without '..'" in str(error.value) and "\n" not in str(error.value)


def test_images_txt_link_resolving_outside_images_is_refused(tmp_path):
    # The link itself sits inside images/, but its file is elsewhere: what counts is the resolved location.
    _tiny_cub(tmp_path / "cub")
    (tmp_path / "cub" / "images" / "001.Albatross" / "escape.png").symlink_to(_photo(tmp_path / "secret.png"))
    number = _append_line(tmp_path / "cub" / "images.txt", "5 001.Albatross/escape.png")
    expected = rf"line {number} names '001.Albatross/escape.png', which resolves to "
    with pytest.raises(S3LError, match=expected + rf"'{re.escape(str(tmp_path / 'secret.png'))}' outside"):
        CUB200(str(tmp_path / "cub"), "train", "fail")


def test_links_inside_images_and_a_linked_images_folder_are_read(tmp_path):
    store = _tiny_cub(tmp_path / "store")
    _photo(store / "images" / "extra" / "b3.png", (0, 0, 250))
    (store / "images" / "002.Auklet" / "b3.png").symlink_to(Path("..", "extra", "b3.png"))
    shutil.copytree(store, tmp_path / "cub", ignore=shutil.ignore_patterns("images"))
    (tmp_path / "cub" / "images").symlink_to(store / "images")
    _append_line(tmp_path / "cub" / "images.txt", "5 002.Auklet/b3.png")
    _append_line(tmp_path / "cub" / "train_test_split.txt", "5 1")
    _append_line(tmp_path / "cub" / "image_class_labels.txt", "5 2")
    train = CUB200(str(tmp_path / "cub"), "train", "fail")
    assert train.samples[-1] == (tmp_path / "cub" / "images" / "002.Auklet" / "b3.png", 1)
    assert np.asarray(train[2][0])[0, 0].tolist() == [0, 0, 250]


@pytest.mark.parametrize("kind, make", [("a folder", os.mkdir), ("a named pipe", os.mkfifo)])
def test_images_txt_entry_that_is_not_a_file_names_line(tmp_path, kind, make):
    _tiny_cub(tmp_path)
    make(tmp_path / "images" / "001.Albatross" / "odd.png")
    number = _append_line(tmp_path / "images.txt", "5 001.Albatross/odd.png")
    with pytest.raises(S3LError, match=rf"images\.txt' line {number} names '001.Albatross/odd.png', "
                                       rf"which is {kind}, not an image file"):
        CUB200(str(tmp_path), "train", "fail")


@pytest.mark.parametrize("name", TINY_CUB_FILES)
def test_repeated_id_in_a_metadata_file_names_file_and_both_lines(tmp_path, name):
    _tiny_cub(tmp_path)
    first = (tmp_path / name).read_text().splitlines()[0]
    number = _append_line(tmp_path / name, first)
    with pytest.raises(S3LError, match=rf"{name}' line {number} repeats id 1 of line 1"):
        CUB200(str(tmp_path), "train", "fail")


def test_one_image_under_two_ids_is_refused(tmp_path):
    _tiny_cub(tmp_path)
    number = _append_line(tmp_path / "images.txt", "5 001.Albatross/./a1.png")
    expected = rf"line {number} lists '001\.Albatross/\./a1\.png' again \(first on line 1\)"
    with pytest.raises(S3LError, match=expected):
        CUB200(str(tmp_path), "train", "fail")


@pytest.mark.parametrize("name", TINY_CUB_FILES)
def test_metadata_that_is_not_utf8_names_file_and_line(tmp_path, name):
    _tiny_cub(tmp_path)
    number = _append_line(tmp_path / name, "9 placeholder")
    (tmp_path / name).write_bytes((tmp_path / name).read_bytes().replace(b"placeholder", b"caf\xe9"))
    with pytest.raises(S3LError, match=rf"{name}' line {number} is not UTF-8 text \(byte 0xe9 at column 6\)"):
        CUB200(str(tmp_path), "train", "fail")


def test_metadata_with_a_utf8_byte_order_mark_is_read(tmp_path):
    _tiny_cub(tmp_path)
    (tmp_path / "images.txt").write_bytes(b"\xef\xbb\xbf" + (tmp_path / "images.txt").read_bytes())
    assert len(CUB200(str(tmp_path), "train", "fail")) == 2


def test_metadata_folder_in_place_of_a_file_names_it(tmp_path):
    _tiny_cub(tmp_path)
    (tmp_path / "classes.txt").unlink()
    (tmp_path / "classes.txt").mkdir()
    with pytest.raises(S3LError, match=r"cannot read '.*classes\.txt' \(Is a directory\).*restore it"):
        CUB200(str(tmp_path), "train", "fail")


def test_unreadable_metadata_names_it(tmp_path, monkeypatch):
    # Tests run as root, which reads any file: the permission error is simulated.
    _tiny_cub(tmp_path)
    read_bytes = Path.read_bytes

    def denied(path: Path) -> bytes:
        if path.name == "train_test_split.txt":
            raise PermissionError(13, "Permission denied", str(path))
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(S3LError, match=r"cannot read '.*train_test_split\.txt' \(Permission denied\)"):
        CUB200(str(tmp_path), "train", "fail")


def test_id_with_a_non_ascii_digit_is_one_line_error(tmp_path):
    _tiny_cub(tmp_path)
    number = _append_line(tmp_path / "images.txt", "\u00b2 001.Albatross/a1.png")  # "²".isdigit() is True
    expected = rf"line {number} has id '\u00b2' where a positive integer was expected"
    with pytest.raises(S3LError, match=expected):
        CUB200(str(tmp_path), "train", "fail")


def test_cub_class_without_training_image_raises_but_its_test_images_are_read(tmp_path):
    rows = {**TINY_CUB, 3: ("002.Auklet/b1.png", "0", 2)}  # class 2: test images only
    _tiny_cub(tmp_path, rows)
    with pytest.raises(S3LError, match=r"split 'train' of .* has no usable image of class '002\.Auklet':"):
        CUB200(str(tmp_path), "train", "fail")
    assert CUB200(str(tmp_path), "test", "fail").targets == [0, 1, 1]


def test_folder_link_to_an_ancestor_is_not_followed(tmp_path, caplog):
    image = _photo(tmp_path / "train" / "bird" / "a.png")
    (tmp_path / "train" / "bird" / "to_root").symlink_to(tmp_path)
    (tmp_path / "train" / "bird" / "to_train").symlink_to(tmp_path / "train")
    with caplog.at_level(logging.WARNING, logger="s3l.data"):
        train = ImageFolderSplit(str(tmp_path), "train", "fail")
    assert train.samples == [(image, 0)]
    assert sorted(record.getMessage().split("'")[1] for record in caplog.records) == [
        str(tmp_path / "train" / "bird" / "to_root"), str(tmp_path / "train" / "bird" / "to_train")]


def test_two_links_to_one_folder_list_its_files_once(tmp_path):
    _photo(tmp_path / "train" / "bird" / "a.png")
    store = tmp_path / "store"
    _photo(store / "s1.png")
    _photo(store / "s2.png")
    (tmp_path / "train" / "bird" / "x").symlink_to(store)
    (tmp_path / "train" / "bird" / "y").symlink_to(store)
    train = ImageFolderSplit(str(tmp_path), "train", "fail")
    assert sorted(path.name for path, _ in train.samples) == ["a.png", "s1.png", "s2.png"]


def test_class_folders_linked_to_one_folder_raise(tmp_path):
    _photo(tmp_path / "store" / "s1.png")
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "a").symlink_to(tmp_path / "store")
    (tmp_path / "train" / "b").symlink_to(tmp_path / "store")
    expected = rf"class folder '{re.escape(str(tmp_path / 'train' / 'b'))}' leads to .* own folder"
    with pytest.raises(S3LError, match=expected):
        ImageFolderSplit(str(tmp_path), "train", "fail")


def test_unreadable_class_folder_raises_naming_it(tmp_path, monkeypatch):
    # Tests run as root, which lists any folder: the permission error is simulated.
    _photo(tmp_path / "train" / "bird" / "a.png")
    _photo(tmp_path / "train" / "cat" / "c.png")
    scandir = os.scandir

    def denied(path):
        if Path(path).name == "cat":
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", denied)
    expected = rf"cannot list folder '{re.escape(str(tmp_path / 'train' / 'cat'))}' \(Permission denied\)"
    with pytest.raises(S3LError, match=expected):
        ImageFolderSplit(str(tmp_path), "train", "fail")


def test_folder_walk_ignores_pipes_and_reports_broken_links(tmp_path):
    folder = tmp_path / "train" / "bird"
    image = _photo(folder / "a.png")
    os.mkfifo(folder / "pipe.jpg")  # opening it would block forever
    (folder / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    train = ImageFolderSplit(str(tmp_path), "train", "skip")
    assert train.samples == [(image, 0)] and train.skipped == [folder / "gone.jpg"]


def test_train_class_without_usable_image_raises_naming_it(tmp_path):
    _photo(tmp_path / "train" / "bird" / "a.png")
    (tmp_path / "train" / "cat").mkdir()
    (tmp_path / "train" / "cat" / "broken.jpg").write_bytes(b"not an image")
    (tmp_path / "train" / "dog").mkdir()
    expected = r"split 'train' at .* has no usable image of class 'cat' \(and 1 more\)"
    with pytest.raises(S3LError, match=expected):
        ImageFolderSplit(str(tmp_path), "train", "skip")


def test_test_split_may_lack_a_class(tmp_path):
    _photo(tmp_path / "train" / "bird" / "a.png")
    _photo(tmp_path / "train" / "cat" / "c.png")
    _photo(tmp_path / "val" / "cat" / "d.png")
    test = ImageFolderSplit(str(tmp_path), "test", "fail")
    assert test.classes == ["bird", "cat"] and test.targets == [1]


def _undecodable_bad_image(root: Path) -> Path:
    """train/bird/a.png plus a broken image named b"bad\\xff.jpg"; returns the broken one's path."""
    _photo(root / "train" / "bird" / "a.png")
    path = root / "train" / "bird" / UNDECODABLE
    path.write_bytes(b"not an image")
    return path


def test_undecodable_file_name_is_logged_readably(tmp_path, capsys, caplog):
    bad = _undecodable_bad_image(tmp_path / "data")
    handler = logging.FileHandler(tmp_path / "s3l.log", encoding="utf-8")
    logging.getLogger("s3l.data").addHandler(handler)
    try:
        with caplog.at_level(logging.WARNING, logger="s3l.data"):
            train = ImageFolderSplit(str(tmp_path / "data"), "train", "skip")
    finally:
        logging.getLogger("s3l.data").removeHandler(handler)
        handler.close()
    assert train.skipped == [bad]
    assert "Logging error" not in capsys.readouterr().err
    logged = (tmp_path / "s3l.log").read_text(encoding="utf-8")
    assert "skipping unusable image" in logged and "bird/bad\\xff.jpg'" in logged
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [logged.strip()]  # the log file holds the message itself
    json.dumps(messages, ensure_ascii=False).encode("utf-8")  # raises on an unpaired surrogate


def test_undecodable_file_name_in_an_error_is_printable(tmp_path):
    _undecodable_bad_image(tmp_path)
    with pytest.raises(S3LError) as error:
        ImageFolderSplit(str(tmp_path), "train", "fail")
    message = str(error.value)
    assert "bird/bad\\xff.jpg' is unusable" in message
    assert message.encode("utf-8").decode("utf-8") == message


def test_good_image_with_undecodable_name_loads(tmp_path):
    path = _photo(tmp_path / "train" / "bird" / UNDECODABLE, (10, 20, 30))
    train = ImageFolderSplit(str(tmp_path), "train", "fail")
    assert train.samples == [(path, 0)]
    assert np.asarray(train[0][0])[0, 0].tolist() == [10, 20, 30]


@pytest.mark.parametrize(("target", "metric", "advice"), [
    ("s3l.data.transfer.VOC2007", "top1", "multi-label: use dataset.metric=map"),
    ("s3l.data.datasets.CUB200", "map", "one class per image: use dataset.metric=top1 or mean_per_class"),
])
def test_a_metric_that_does_not_fit_the_targets_is_refused(target, metric, advice):
    dataset = OmegaConf.create({"_target_": target, "name": "data", "root": "/data", "metric": metric})
    with pytest.raises(S3LError, match=f"dataset.metric={metric} does not fit dataset=data, whose targets are {advice}"):
        check_dataset_config(dataset)
