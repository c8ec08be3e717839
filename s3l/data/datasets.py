"""Labelled image datasets: CUB-200-2011, any train/val class folders, and scikit-learn's digits.

Every dataset returns `(PIL RGB image, int label)` and exposes `.classes` (names) and `.targets`
(labels in sample order). File-backed datasets decode every image once at construction, so that a
broken or non-photo file stops the run in its first seconds (`bad_images="fail"`) or is dropped with
a warning (`bad_images="skip"`), instead of crashing a DataLoader worker hours later.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from s3l.errors import S3LError

logger = logging.getLogger("s3l.data")

DATASET_NAMES = ("cub200", "imagefolder", "digits")
SPLITS = ("train", "test")
BAD_IMAGE_POLICIES = ("skip", "fail")
# Files with these extensions are looked at (case-insensitive); anything else in a class folder is ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
# GIF decodes fine but is a palette graphics format (icons, "image not found" placeholders), not a photo.
NON_PHOTO_FORMATS = ("GIF",)
# The test split is called val/ by the upstream code (ImageNet style) and test/ by many others.
SPLIT_FOLDERS = {"train": ("train",), "test": ("val", "test")}

CUB_DIR = "CUB_200_2011"
CUB_FILES = ("images.txt", "train_test_split.txt", "image_class_labels.txt", "classes.txt")
CUB_ARCHIVE = "official archive: CUB_200_2011.tgz from https://data.caltech.edu/records/65de6-vp158"
CUB_LAYOUT = (
    f"expected {CUB_DIR}/ with {', '.join(CUB_FILES)} and images/ ({CUB_ARCHIVE}), "
    "or train/ and val/ class folders"
)
FOLDER_LAYOUT = "expected train/<class>/ and val/<class>/ (or test/<class>/) folders of images"


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open an image file and return it decoded as RGB (grayscale, palette and CMYK are converted)."""
    with Image.open(path) as image:
        if image.mode == "P" and "transparency" in image.info:
            # Going through RGBA avoids PIL's warning about byte-encoded palette transparency.
            image = image.convert("RGBA")
        return image.convert("RGB")


def image_problem(path: Path) -> str | None:
    """Why `path` is not a usable photo (unreadable, truncated, not a photo format), or None if it is."""
    try:
        with Image.open(path) as image:
            if image.format in NON_PHOTO_FORMATS:
                return f"{image.format} is a graphics format, not a photo"
            # Decode the whole file: Image.verify() does not notice a truncated JPEG. JPEGs decode at 1/8
            # scale, which still reads and entropy-decodes every byte but skips most of the work.
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    # Decoders raise OSError, SyntaxError, EOFError, ValueError...: any of them means unusable.
    except Exception as error:
        return str(error) or type(error).__name__
    return None


class LabelledImages(Dataset):
    """Image files with integer labels, checked once at construction.

    `samples` holds `(path, label)` pairs; files that fail `image_problem` are dropped and listed in
    `.skipped` (policy "skip") or raise S3LError (policy "fail").
    """

    def __init__(
        self, samples: list[tuple[Path, int]], classes: list[str], bad_images: str, where: str, layout: str
    ) -> None:
        self.classes = classes
        self.skipped: list[Path] = []
        self.samples = self._usable(samples, bad_images)
        self.targets = [label for _, label in self.samples]
        if not self.samples:
            found = f"{len(samples)} found, none usable, see the warnings" if samples else "no image files"
            raise S3LError(f"{where} has no usable images ({found}): {layout}")

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
                    f"dataset image '{path}' is unusable ({problem}): remove it or set dataset.bad_images=skip"
                )
            else:
                logger.warning("skipping unusable image '%s' (%s)", path, problem)
                self.skipped.append(path)
        return usable

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        path, label = self.samples[index]
        return load_rgb(path), label


class ImageFolderSplit(LabelledImages):
    """One split of an ImageNet-style tree: `root/train/<class>/*` and `root/val/<class>/*`.

    The test split reads `val/` (the upstream name) or else `test/`. Classes are the sorted folder
    names of `train/`, so both splits share one label mapping even if a test folder lacks a class.
    """

    def __init__(self, root: str, split: str, bad_images: str) -> None:
        _check_split(split)
        _check_policy(bad_images)
        root_path = _existing_root(root, FOLDER_LAYOUT)
        samples, classes, split_dir = _scan_folders(root_path, split, FOLDER_LAYOUT)
        super().__init__(
            samples, classes, bad_images, f"dataset split '{split}' at '{split_dir}'", FOLDER_LAYOUT
        )


class CUB200(LabelledImages):
    """Caltech-UCSD Birds-200-2011 (Wah et al. 2011), official train/test split.

    Reads either the official layout (`CUB_200_2011/` with images.txt and friends, given as that folder
    or its parent) or the upstream's `train/` and `val/` class folders. In the official layout the
    images listed in images.txt are joined on their id with the split, label and class files, which may
    list more ids (a partial copy); the class ids present are renumbered 0..C-1 in id order and named as
    in classes.txt (e.g. "001.Black_footed_Albatross", the same as the class folder names).
    """

    def __init__(self, root: str, split: str, bad_images: str) -> None:
        _check_split(split)
        _check_policy(bad_images)
        root_path = _existing_root(root, CUB_LAYOUT)
        official = _find_official_cub(root_path)
        if official is not None:
            samples, classes = _read_official_cub(official, split)
            where = f"dataset split '{split}' of '{official}'"
        else:
            samples, classes, split_dir = _scan_folders(root_path, split, CUB_LAYOUT)
            where = f"dataset split '{split}' at '{split_dir}'"
        super().__init__(samples, classes, bad_images, where, CUB_LAYOUT)


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


def build_dataset(
    name: str, root: str | None, split: str, bad_images: str, image_size: int | None = None
) -> Dataset:
    """The dataset `name` (one of DATASET_NAMES) for `split` ("train" or "test").

    digits ignores root and bad_images and needs image_size; the folder datasets ignore image_size.
    """
    if name == "digits":
        return Digits(split, image_size)
    if name not in DATASET_NAMES:
        raise S3LError(f"dataset.name '{name}' is unknown: choose one of {', '.join(DATASET_NAMES)}")
    layout = CUB_LAYOUT if name == "cub200" else FOLDER_LAYOUT
    if root is None:
        raise S3LError(f"dataset.root is not set for dataset '{name}': {layout}")
    dataset_class = CUB200 if name == "cub200" else ImageFolderSplit
    return dataset_class(root, split, bad_images)


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
        raise S3LError(f"dataset.root '{root}' does not exist or is not a folder: {layout}")
    return path


def _scan_folders(root: Path, split: str, layout: str) -> tuple[list[tuple[Path, int]], list[str], Path]:
    """Samples, class names and the folder read for `split` of a train/ + val/ class-folder tree."""
    train_dir = root / "train"
    split_dir = next((root / name for name in SPLIT_FOLDERS[split] if (root / name).is_dir()), None)
    if not train_dir.is_dir():
        # train/ names the classes of both splits, so the test split needs it too.
        raise S3LError(f"dataset.root '{root}' has no train/ folder: {layout}")
    if split_dir is None:
        wanted = "/ or ".join(SPLIT_FOLDERS[split])
        raise S3LError(f"dataset.root '{root}' has no {wanted}/ folder for split '{split}': {layout}")
    classes = _class_folders(train_dir)
    if not classes:
        raise S3LError(f"dataset.root '{root}' has no class folders in train/: {layout}")
    label_of = {name: label for label, name in enumerate(classes)}
    samples = []
    for name in _class_folders(split_dir):
        if name not in label_of:
            raise S3LError(
                f"class folder '{split_dir / name}' has no counterpart in '{train_dir}': "
                "the train and test splits must use the same class folder names"
            )
        samples += [(path, label_of[name]) for path in _image_files(split_dir / name)]
    return samples, classes, split_dir


def _class_folders(folder: Path) -> list[str]:
    # Hidden folders (.ipynb_checkpoints, .git) are not classes.
    return sorted(
        entry.name for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith(".")
    )


def _image_files(folder: Path) -> list[Path]:
    files = []
    for parent, _, names in os.walk(folder, followlinks=True):
        files += [Path(parent, name) for name in names if name.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(files)


def _find_official_cub(root: Path) -> Path | None:
    """The folder holding the official CUB files (root or root/CUB_200_2011), or None if neither has any."""
    for candidate in (root, root / CUB_DIR):
        present = [name for name in (*CUB_FILES, "images") if (candidate / name).exists()]
        if not present:
            continue
        missing = [name for name in (*CUB_FILES, "images/") if not (candidate / name).exists()]
        if missing:
            raise S3LError(f"CUB folder '{candidate}' lacks {', '.join(missing)}: {CUB_LAYOUT}")
        return candidate
    if not (root / "train").is_dir():
        raise S3LError(
            f"dataset.root '{root}' has neither {CUB_DIR}/ ({', '.join(CUB_FILES)}, images/) "
            f"nor train/ and val/ class folders: {CUB_LAYOUT}"
        )
    return None


def _read_official_cub(folder: Path, split: str) -> tuple[list[tuple[Path, int]], list[str]]:
    """Samples and class names of `split`, starting from images.txt and joining the other files on id."""
    paths = _read_table(folder / "images.txt")
    is_train = _read_table(folder / "train_test_split.txt")
    class_of = _read_table(folder / "image_class_labels.txt")
    class_names = _read_table(folder / "classes.txt")
    for table, name in ((is_train, "train_test_split.txt"), (class_of, "image_class_labels.txt")):
        absent = [image_id for image_id in paths if image_id not in table]
        if absent:
            raise S3LError(f"'{folder / name}' lacks image id {absent[0]} listed in images.txt: {CUB_LAYOUT}")
    flags = {is_train[image_id] for image_id in paths} - {"0", "1"}
    if flags:
        raise S3LError(
            f"'{folder / 'train_test_split.txt'}' has split flag {flags.pop()!r}, expected 1 (train) or 0 (test)"
        )
    class_ids = sorted({_as_id(class_of[image_id], folder / "image_class_labels.txt") for image_id in paths})
    unnamed = [class_id for class_id in class_ids if class_id not in class_names]
    if unnamed:
        raise S3LError(f"'{folder / 'classes.txt'}' lacks class id {unnamed[0]}: {CUB_LAYOUT}")
    label_of = {class_id: label for label, class_id in enumerate(class_ids)}
    wanted = "1" if split == "train" else "0"
    samples = [
        (folder / "images" / path, label_of[int(class_of[image_id])])
        for image_id, path in paths.items()
        if is_train[image_id] == wanted
    ]
    return samples, [class_names[class_id] for class_id in class_ids]


def _read_table(path: Path) -> dict[int, str]:
    """A CUB metadata file, "<id> <value>" per line, as {id: value}."""
    table = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split(maxsplit=1)
        if not parts:
            continue
        if len(parts) != 2:
            raise S3LError(f"'{path}' line {number} is not '<id> <value>': {line.strip()!r}; {CUB_LAYOUT}")
        table[_as_id(parts[0], path)] = parts[1].strip()
    return table


def _as_id(text: str, path: Path) -> int:
    if not text.isdigit():
        raise S3LError(f"'{path}' has id {text!r} where a positive integer was expected: {CUB_LAYOUT}")
    return int(text)
