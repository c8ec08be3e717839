"""Labelled image datasets: CUB-200-2011, any train/val class folders, and scikit-learn's digits.

Every dataset returns `(PIL RGB image, int label)` and exposes `.classes` (names) and `.targets`
(labels in sample order). File-backed datasets decode every image once at construction, so that a
broken or non-photo file stops the run in its first seconds (`bad_images="fail"`) or is dropped with
a warning (`bad_images="skip"`), instead of crashing a DataLoader worker hours later. Metadata and
folders are checked as strictly: a path that leaves the dataset, a repeated id or an unreadable folder
is one S3LError naming the file (and line), never a traceback or a silently smaller dataset.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np
from omegaconf import DictConfig
from PIL import Image
from torch.utils.data import Dataset

from s3l.config import target_class
from s3l.data.cub_metadata import CUB_LAYOUT, find_official_cub, read_official_cub
from s3l.data.images import display_path, image_problem, load_rgb
from s3l.data.subset import Subset, read_subset
from s3l.errors import S3LError

logger = logging.getLogger("s3l.data")

SPLITS = ("train", "test")
BAD_IMAGE_POLICIES = ("skip", "fail")
DATA_FORMATS = ("files", "litdata")  # how pretraining reads a file-backed dataset (dataset.format)
BadImages = Literal[BAD_IMAGE_POLICIES]  # type: ignore[valid-type]
# Files with these extensions are looked at (case-insensitive); anything else in a class folder is ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
# The test split is called val/ by the upstream code (ImageNet style) and test/ by many others.
SPLIT_FOLDERS = {"train": ("train",), "test": ("val", "test")}

FOLDER_LAYOUT = "expected train/<class>/ and val/<class>/ (or test/<class>/) folders of images"
class LabelledImages(Dataset):
    """Image files with integer labels, checked once at construction.

    `samples` holds `(path, label)` pairs; files that fail `image_problem` are dropped and listed in
    `.skipped` (policy "skip") or raise S3LError (policy "fail"). With `every_class`, a class left
    without any usable image raises S3LError too (a training split must show every class). `.base` is the
    folder that subset lists are relative to, `.subset` the subset applied (or None).
    """

    base: Path
    subset: Subset | None
    cacheable = True  # integer labels and image files: the resized-image cache and subsets can serve it

    def __init__(
        self,
        samples: list[tuple[Path, int]],
        classes: list[str],
        bad_images: str,
        where: str,
        layout: str,
        every_class: bool = False,
    ) -> None:
        self.classes = classes
        self.skipped: list[Path] = []
        self.samples = self._usable(samples, bad_images)
        self.targets = [label for _, label in self.samples]
        if not self.samples:
            found = f"{len(samples)} found, none usable, see the warnings" if samples else "no image files"
            raise S3LError(f"{where} has no usable images ({found}): {layout}")
        if every_class:
            self._check_every_class(where)

    def _keep_listed(self, subset: str | None, samples: list[tuple[Path, int]], classes: list[str], split: str
                     ) -> tuple[list[tuple[Path, int]], list[str]]:
        """The samples and classes that the subset.json `subset` lists for `split` (all of them without one),
        relative to `.base`; sets `.subset`."""
        self.subset = None if subset is None else read_subset(subset)
        return (samples, classes) if self.subset is None else self.subset.keep(samples, classes, self.base, split)

    def _usable(self, samples: list[tuple[Path, int]], bad_images: str) -> list[tuple[Path, int]]:
        # Decoding releases the GIL, so threads check files in parallel.
        with ThreadPoolExecutor(max_workers=min(32, os.cpu_count() or 1)) as pool:
            problems = list(pool.map(image_problem, [path for path, _ in samples]))
        usable = []
        for (path, label), problem in zip(samples, problems, strict=True):
            if problem is None:
                usable.append((path, label))
            elif bad_images == "fail":
                raise S3LError(
                    f"dataset image '{display_path(path)}' is unusable ({problem}): "
                    "remove it or set dataset.bad_images=skip"
                )
            else:
                logger.warning("skipping unusable image '%s' (%s)", display_path(path), problem)
                self.skipped.append(path)
        return usable

    def _check_every_class(self, where: str) -> None:
        counts = np.bincount(self.targets, minlength=len(self.classes))
        empty = [name for name, count in zip(self.classes, counts, strict=True) if count == 0]
        if empty:
            others = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
            raise S3LError(
                f"{where} has no usable image of class '{display_path(empty[0])}'{others}: "
                "every class needs training images, so add some or remove the class"
            )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        path, label = self.samples[index]
        return load_rgb(path), label


class ImageFolderSplit(LabelledImages):
    """One split of an ImageNet-style tree: `root/train/<class>/*` and `root/val/<class>/*`.

    The test split reads `val/` (the upstream name) or else `test/`. Classes are the sorted folder
    names of `train/`, so both splits share one label mapping even if a test folder lacks a class
    (a partial copy); every class needs a usable image in `train/`.
    """

    LAYOUT = FOLDER_LAYOUT

    def __init__(self, root: str | None, split: str, bad_images: BadImages = "skip", subset: str | None = None
                 ) -> None:
        _check_split(split)
        _check_policy(bad_images)
        root_path = _existing_root(root, FOLDER_LAYOUT)
        samples, classes, self.base = _scan_folders(root_path, split, FOLDER_LAYOUT)
        samples, classes = self._keep_listed(subset, samples, classes, split)
        where = f"dataset split '{split}' at '{display_path(self.base)}'"
        super().__init__(samples, classes, bad_images, where, FOLDER_LAYOUT, every_class=split == "train")


class CUB200(LabelledImages):
    """Caltech-UCSD Birds-200-2011 (Wah et al. 2011), official train/test split.

    Reads either the official layout (`CUB_200_2011/` with images.txt and friends, given as that folder
    or its parent) or the upstream's `train/` and `val/` class folders. In the official layout the
    images listed in images.txt are joined on their id with the split, label and class files, which may
    list more ids (a partial copy); the class ids present are renumbered 0..C-1 in id order and named as
    in classes.txt (e.g. "001.Black_footed_Albatross", the same as the class folder names).
    """

    LAYOUT = CUB_LAYOUT

    def __init__(self, root: str | None, split: str, bad_images: BadImages = "skip", subset: str | None = None
                 ) -> None:
        _check_split(split)
        _check_policy(bad_images)
        root_path = _existing_root(root, CUB_LAYOUT)
        official = find_official_cub(root_path)
        if official is not None:
            samples, classes = read_official_cub(official, split)
            self.base = official / "images"
            where = f"dataset split '{split}' of '{display_path(official)}'"
        else:
            samples, classes, self.base = _scan_folders(root_path, split, CUB_LAYOUT)
            where = f"dataset split '{split}' at '{display_path(self.base)}'"
        samples, classes = self._keep_listed(subset, samples, classes, split)
        super().__init__(samples, classes, bad_images, where, CUB_LAYOUT, every_class=split == "train")


class Digits(Dataset):
    """The 1,797 real 8x8 handwritten digits shipped with scikit-learn (offline), as RGB images.

    Images are scaled from 0..16 to 0..255 and upsampled bilinearly to `image_size`. The split is a
    fixed stratified 80% train / 20% test (scikit-learn `train_test_split(random_state=0,
    stratify=labels)`): 1,437 train and 360 test images, the same on every run.
    """

    def __init__(self, split: str, image_size: int) -> None:
        # Imported here: scikit-learn is only needed by this small demo dataset.
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        _check_split(split)
        digits = load_digits()
        train_index, test_index = train_test_split(
            np.arange(len(digits.target)), test_size=0.2, random_state=0, stratify=digits.target
        )
        index = train_index if split == "train" else test_index
        self.images = np.round(digits.images[index] * (255 / 16)).astype(np.uint8)
        self.targets = [int(label) for label in digits.target[index]]
        self.classes = [str(name) for name in digits.target_names]
        self.image_size = image_size
        self.skipped: list[str] = []  # nothing to skip: the arrays ship inside scikit-learn

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        image = Image.fromarray(self.images[index])  # uint8 2-D: mode "L"
        image = image.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
        return image.convert("RGB"), self.targets[index]


def dataset_class(dataset: DictConfig) -> type:
    """The class that `dataset._target_` names (one S3LError line if it is not a torch Dataset)."""
    return target_class(dataset, "dataset", Dataset, "a Dataset", "a dataset class, e.g. s3l.data.datasets.CUB200 "
                        "(or pick a dataset YAML: dataset=cub200)")


def dataset_settings(cls: type) -> list[str]:
    """The settings a dataset class reads from its YAML: its constructor's parameters but the split."""
    return [name for name in inspect.signature(cls).parameters if name != "split"]


def build_dataset(dataset: DictConfig, split: str) -> Dataset:
    """The `split` ("train" or "test") of the dataset that the `dataset` group's YAML describes: its class
    (`_target_`) built with the settings its constructor declares (root, bad_images, subset, ...)."""
    _check_split(split)
    cls = dataset_class(dataset)
    return cls(split=split, **{name: dataset[name] for name in dataset_settings(cls) if name in dataset})


def check_dataset_config(dataset: DictConfig) -> None:
    """What the dataset's YAML must say before any image is read: its root, a metric that fits its targets, and
    file-backed data for the resized-image cache, resident data and subsets."""
    cls = dataset_class(dataset)
    layout = getattr(cls, "LAYOUT", "")
    if "root" in dataset_settings(cls) and not dataset.root:
        raise S3LError(f"dataset.root is not set for dataset={dataset.name}: pass paths.datasets.{dataset.name}="
                       f"/path/to/it (or dataset.root=...); {layout}")
    multilabel = getattr(cls, "multilabel", False)
    if multilabel != (dataset.get("metric") == "map"):  # the stages read multi-label from the metric
        raise S3LError(f"dataset.metric={dataset.get('metric')} does not fit dataset={dataset.name}, whose targets are "
                       + ("multi-label: use dataset.metric=map" if multilabel else
                          "one class per image: use dataset.metric=top1 or mean_per_class"))
    if getattr(cls, "cacheable", False):
        if dataset.get("subset") is not None:
            read_subset(dataset.subset)  # a missing or malformed list fails now, before any image is read
        if dataset.get("format") == "litdata":
            _check_streaming(dataset)
        return
    for key, off, what in (("format", "files", "streams shards of"),
                           ("cache", False, "caches resized images of"),
                           ("resident", False, "loads the resized-image cache of"),
                           ("subset", None, "keeps listed files of")):
        value = dataset.get(key, off)
        if value not in (off, None):
            shown, reset = ("true", "false") if value is True else (value, off or "null")
            raise S3LError(f"dataset.{key}={shown} {what} a single-label dataset read from image files, not "
                           f"dataset={dataset.name}: set dataset.{key}={reset}")


def _check_streaming(dataset: DictConfig) -> None:
    for key, what in (("cache", "the memory-mapped cache"), ("resident", "device-resident data")):
        if dataset.get(key):
            raise S3LError(f"dataset.format=litdata and dataset.{key}=true are two stores of the same resized images "
                           f"(LitData shards, {what}): set dataset.{key}=false, or dataset.format=files")
    if importlib.util.find_spec("litdata") is None:
        raise S3LError("dataset.format=litdata needs LitData, which is not installed: pip install -e '.[stream]' "
                       "(or pip install litdata), or use dataset.format=files")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise S3LError(f"dataset split '{split}' is unknown: choose one of {', '.join(SPLITS)}")


def _check_policy(bad_images: str) -> None:
    if bad_images not in BAD_IMAGE_POLICIES:
        raise S3LError(
            f"dataset.bad_images '{bad_images}' is unknown: choose one of {', '.join(BAD_IMAGE_POLICIES)}"
        )


def _existing_root(root: str, layout: str) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        raise S3LError(f"dataset.root '{display_path(root)}' does not exist or is not a folder: {layout}")
    return path


def _scan_folders(root: Path, split: str, layout: str) -> tuple[list[tuple[Path, int]], list[str], Path]:
    """Samples, class names and the folder read for `split` of a train/ + val/ class-folder tree."""
    train_dir = root / "train"
    split_dir = next((root / name for name in SPLIT_FOLDERS[split] if (root / name).is_dir()), None)
    if not train_dir.is_dir():
        # train/ names the classes of both splits, so the test split needs it too.
        raise S3LError(f"dataset.root '{display_path(root)}' has no train/ folder: {layout}")
    if split_dir is None:
        wanted = "/ or ".join(SPLIT_FOLDERS[split])
        raise S3LError(
            f"dataset.root '{display_path(root)}' has no {wanted}/ folder for split '{split}': {layout}"
        )
    classes = _class_folders(train_dir)
    if not classes:
        raise S3LError(f"dataset.root '{display_path(root)}' has no class folders in train/: {layout}")
    label_of = {name: label for label, name in enumerate(classes)}
    samples = []
    visited = _real_ancestry(split_dir)
    for name in _class_folders(split_dir):
        if name not in label_of:
            raise S3LError(
                f"class folder '{display_path(split_dir / name)}' has no counterpart in "
                f"'{display_path(train_dir)}': the train and test splits must use the same class folder names"
            )
        samples += [(path, label_of[name]) for path in _image_files(split_dir / name, visited)]
    return samples, classes, split_dir


def _class_folders(folder: Path) -> list[str]:
    # Hidden folders (.ipynb_checkpoints, .git) are not classes.
    return sorted(
        entry.name for entry in _entries(folder) if _is_folder(entry) and not entry.name.startswith(".")
    )


def _real_ancestry(folder: Path) -> set[str]:
    """The real paths of `folder` and of every folder above it: a link to any of them is a loop."""
    real = Path(os.path.realpath(folder))
    return {str(real), *(str(parent) for parent in real.parents)}


def _image_files(folder: Path, visited: set[str]) -> list[Path]:
    """The image files under the class folder `folder`, following symlinked folders, each real one once.

    `visited` holds the real paths of the folders read so far (the split folder and those above it, the
    classes before this one) and grows with this class's: a link back to one of them is a loop or would
    list its files twice, so it is not followed.
    """
    real = os.path.realpath(folder)
    if real in visited:
        raise S3LError(
            f"class folder '{display_path(folder)}' leads to '{display_path(real)}', which is read already "
            "(the split folder, a folder above it, or another class): give each class its own folder"
        )
    visited.add(real)
    files, pending = [], [folder]
    while pending:
        for entry in _entries(pending.pop()):
            if _is_folder(entry):
                target = os.path.realpath(entry.path)
                if target in visited:
                    logger.warning("not following folder '%s': its real location '%s' is read already",
                                   display_path(entry.path), display_path(target))
                else:
                    visited.add(target)
                    pending.append(Path(entry.path))
            elif entry.name.lower().endswith(IMAGE_EXTENSIONS) and _is_file_or_broken(entry):
                files.append(Path(entry.path))
    return sorted(files)


def _entries(folder: Path) -> list[os.DirEntry]:
    # A folder that cannot be listed would otherwise look like an empty class.
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except OSError as error:
        raise S3LError(
            f"cannot list folder '{display_path(folder)}' ({error.strerror or error}): "
            "make it readable or remove it from the dataset"
        ) from None


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a link to itself (ELOOP) is no folder; as a file, the bad-image policy reports it
        return False


def _is_file_or_broken(entry: os.DirEntry) -> bool:
    # Named pipes, sockets and devices are skipped (opening a pipe would block forever), but a broken
    # link is kept, so that the bad-image policy reports it instead of the image silently vanishing.
    try:
        return stat.S_ISREG(entry.stat().st_mode)
    except OSError:
        return True
