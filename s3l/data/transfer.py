"""Transfer-learning datasets read from local copies, in the layouts torchvision reads (and downloads).

Torchvision's dataset classes parse the official annotation files; the resulting `(path, label)` lists go
through `LabelledImages`, so every image is checked once and the bad_images policy and subset lists apply as
for CUB. Each class names its expected on-disk layout in `LAYOUT`; `multilabel` is True only for VOC2007.

* StanfordCars: 196 classes, official train (8,144) / test (8,041) split.
* FGVCAircraft: 100 variants; our train is the official "trainval" (6,667), test the official "test" (3,333).
* OxfordPets: 37 breeds; train is "trainval" (3,680), test is "test" (3,669).
* Caltech101: 102 classes (the 101 categories and BACKGROUND_Google, as the upstream and the paper count
  them); there is no official split, so `train_per_class` images per class (default 30) drawn with a seeded
  shuffle are train and the rest test.
* Flowers102: train is the official "train" + "val" (1,020 + 1,020), test the official "test" (6,149).
* CIFAR: CIFAR-10 or CIFAR-100 (50,000 train / 10,000 test, 32x32), held in memory.
* VOC2007: 20-class multi-label classification, train "trainval" (5,011), test "test" (4,952); the target
  is an int8 vector: 1 = a non-difficult object of the class, -1 = only difficult ones, 0 = absent.

StanfordCars, FGVCAircraft, OxfordPets and Caltech101 also read the upstream's copies as class folders
(`root/train/<class>/` and `root/val/<class>/`), whenever `root/train/` is a folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import torch
import torchvision.datasets as tvd
from PIL import Image
from torch.utils.data import Dataset

from s3l.data.datasets import (
    LabelledImages,
    _check_policy,
    _check_split,
    _class_folders,
    _existing_root,
    _image_files,
    _real_ancestry,
    _scan_folders,
)
from s3l.data.images import display_path
from s3l.errors import S3LError

DOWNLOAD_HINT = ", or pass dataset.download=true"
FOLDER_COPY = "or the upstream's train/<class>/ and val/<class>/ folders"
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


class _TransferImages(LabelledImages):
    """One split of a file-backed single-label dataset; subclasses parse their layout in `_read`."""

    LAYOUT: str
    DOWNLOADABLE = True  # torchvision can download it
    READS_FOLDER_COPY = False  # `root/train/` and `root/val/` class folders are read instead, if present
    multilabel = False

    def __init__(
        self, root: str | None, split: str, bad_images: str = "skip", subset: str | None = None,
        download: bool = False,
    ) -> None:
        _check_split(split)
        _check_policy(bad_images)
        if subset is not None and not self.cacheable:
            raise S3LError(f"dataset.subset does not apply to {type(self).__name__}: subset lists give one class "
                           "per image")
        expected = _expected(type(self))
        root_path = _root_path(root, expected, download)
        if self.READS_FOLDER_COPY and (root_path / "train").is_dir():
            samples, classes, self.base = _scan_folders(root_path, split, expected)
        else:
            with _torchvision_errors(root_path, type(self).__name__, expected):
                samples, classes, self.base = self._read(root_path, split, download)
        samples, classes = self._keep_listed(subset, samples, classes, split)
        where = f"dataset split '{split}' at '{display_path(self.base)}'"
        super().__init__(samples, classes, bad_images, where, expected, every_class=split == "train")

    def _read(self, root: Path, split: str, download: bool) -> tuple[list[tuple[Path, int]], list[str], Path]:
        """Samples, class names and the folder subset paths are relative to, from the official layout."""
        raise NotImplementedError


class StanfordCars(_TransferImages):
    """Stanford Cars (Krause et al. 2013): 196 classes, official train/test split, via torchvision.

    Torchvision can no longer download it (the original URL is gone): get a copy in its layout.
    """

    LAYOUT = (
        "expected <root>/stanford_cars/ with devkit/cars_meta.mat, devkit/cars_train_annos.mat, "
        f"cars_test_annos_withlabels.mat, cars_train/ and cars_test/ (torchvision's layout), {FOLDER_COPY}"
    )
    DOWNLOADABLE = False
    READS_FOLDER_COPY = True

    def _read(self, root, split, download):
        cars = tvd.StanfordCars(str(root), split=split, download=download)
        # torchvision keeps the parsed list in private attributes only.
        samples = [(Path(path), int(label)) for path, label in cars._samples]
        return samples, [str(name) for name in cars.classes], cars._images_base_path


class FGVCAircraft(_TransferImages):
    """FGVC-Aircraft 2013b (Maji et al. 2013), 100 variants; "train" is the official "trainval" split.

    Both official halves of trainval are trained on (the usual protocol); "test" is the official test split.
    """

    LAYOUT = (
        "expected <root>/fgvc-aircraft-2013b/data/ with images/, variants.txt and "
        f"images_variant_trainval.txt / images_variant_test.txt (torchvision's layout), {FOLDER_COPY}"
    )
    READS_FOLDER_COPY = True

    def _read(self, root, split, download):
        part = "trainval" if split == "train" else "test"
        aircraft = tvd.FGVCAircraft(str(root), split=part, annotation_level="variant", download=download)
        samples = [(Path(path), label) for path, label in zip(aircraft._image_files, aircraft._labels)]
        return samples, aircraft.classes, root / "fgvc-aircraft-2013b" / "data" / "images"


class OxfordPets(_TransferImages):
    """Oxford-IIIT Pet (Parkhi et al. 2012), 37 breeds; "train" is the official "trainval" split."""

    LAYOUT = (
        "expected <root>/oxford-iiit-pet/ with images/ and annotations/trainval.txt, annotations/test.txt "
        f"(torchvision's OxfordIIITPet layout), {FOLDER_COPY}"
    )
    READS_FOLDER_COPY = True

    def _read(self, root, split, download):
        part = "trainval" if split == "train" else "test"
        pets = tvd.OxfordIIITPet(str(root), split=part, download=download)
        return list(zip(pets._images, pets._labels)), pets.classes, pets._images_folder


class Caltech101(_TransferImages):
    """Caltech-101 (Fei-Fei et al. 2004): 102 classes, the 101 categories and BACKGROUND_Google.

    There is no official split: in each class (sorted folder names, class index i) the sorted image files are
    shuffled by `numpy.random.default_rng([split_seed, i])`; the first `train_per_class` are train, the rest
    test. Torchvision's Caltech101 only downloads here, as it drops the background class.
    """

    LAYOUT = (
        "expected <root>/101_ObjectCategories/<class>/*.jpg or <root>/caltech101/101_ObjectCategories/ "
        f"(torchvision's download), 102 class folders with BACKGROUND_Google, {FOLDER_COPY}"
    )
    READS_FOLDER_COPY = True

    def __init__(
        self, root: str | None, split: str, bad_images: str = "skip", subset: str | None = None,
        download: bool = False, train_per_class: int = 30, split_seed: int = 0,
    ) -> None:
        if train_per_class < 1 or split_seed < 0:
            raise S3LError(
                f"Caltech101 needs train_per_class >= 1 and split_seed >= 0, "
                f"got {train_per_class} and {split_seed}"
            )
        self.train_per_class, self.split_seed = train_per_class, split_seed
        super().__init__(root, split, bad_images, subset, download)

    def _read(self, root, split, download):
        if download:
            tvd.Caltech101(str(root), download=True)  # extracts into <root>/caltech101/
        folder = next(
            (path for path in (root, root / "caltech101") if (path / "101_ObjectCategories").is_dir()), None
        )
        if folder is None:
            raise S3LError(f"dataset.root '{display_path(root)}' has no 101_ObjectCategories/ folder: "
                           f"{_expected(Caltech101)}")
        folder = folder / "101_ObjectCategories"
        classes = _class_folders(folder)
        visited = _real_ancestry(folder)
        samples = []
        for label, name in enumerate(classes):
            files = _image_files(folder / name, visited)
            order = np.random.default_rng([self.split_seed, label]).permutation(len(files))
            chosen = order[: self.train_per_class] if split == "train" else order[self.train_per_class:]
            samples += [(files[index], label) for index in sorted(chosen)]
        return samples, classes, folder


class Flowers102(_TransferImages):
    """Oxford Flowers-102 (Nilsback & Zisserman 2008): "train" is the official train + val, via torchvision.

    Torchvision checks the md5 of imagelabels.mat and setid.mat.
    """

    LAYOUT = "expected <root>/flowers-102/ with jpg/, imagelabels.mat and setid.mat (torchvision's layout)"

    def _read(self, root, split, download):
        parts = ("train", "val") if split == "train" else ("test",)
        sets = [tvd.Flowers102(str(root), split=part, download=download) for part in parts]
        samples = [(Path(path), label) for flowers in sets
                   for path, label in zip(flowers._image_files, flowers._labels)]
        classes = getattr(tvd.Flowers102, "classes", None) or [str(number) for number in range(1, 103)]
        return samples, list(classes), sets[0]._images_folder


class CIFAR(Dataset):
    """CIFAR-10 or CIFAR-100 (Krizhevsky 2009), official split, in memory via torchvision (md5-checked)."""

    LAYOUT = (
        "expected <root>/cifar-10-batches-py/ (CIFAR-10) or <root>/cifar-100-python/ (CIFAR-100), "
        "as torchvision extracts them"
    )
    multilabel = False

    def __init__(self, root: str | None, split: str, num_classes: int, download: bool = False) -> None:
        _check_split(split)
        if num_classes not in (10, 100):
            raise S3LError(f"CIFAR has 10 or 100 classes, not {num_classes}")
        expected = _expected(CIFAR)
        root_path = _root_path(root, expected, download)
        source = tvd.CIFAR10 if num_classes == 10 else tvd.CIFAR100
        with _torchvision_errors(root_path, f"CIFAR-{num_classes}", expected):
            cifar = source(str(root_path), train=split == "train", download=download)
        self.images = cifar.data  # (N, 32, 32, 3) uint8
        self.targets = [int(label) for label in cifar.targets]
        self.classes = list(cifar.classes)
        self.skipped: list[str] = []  # nothing to skip: the pixels are arrays

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[index]), self.targets[index]  # uint8 (32, 32, 3): mode "RGB"


class VOC2007(_TransferImages):
    """PASCAL VOC 2007 image classification: 20 classes, multi-label; "train" is "trainval".

    File lists come from torchvision's VOCDetection and the annotations are parsed once, here. The target is
    an int8 tensor over VOC_CLASSES: 1 = a non-difficult object of the class, -1 = difficult objects only,
    0 = absent (the upstream trains on difficult-only as positive and ignores them at test). Subset lists
    hold one class per image, so they do not apply.
    """

    LAYOUT = (
        "expected <root>/VOCdevkit/VOC2007/ with JPEGImages/, Annotations/ and ImageSets/Main/trainval.txt, "
        "test.txt (the 2007 trainval and test archives extracted into <root>)"
    )
    cacheable = False  # vector targets: the resized-image cache stores one integer label per image
    multilabel = True

    def _read(self, root, split, download):
        part = "trainval" if split == "train" else "test"
        voc = tvd.VOCDetection(str(root), year="2007", image_set=part, download=download)
        expected = _expected(VOC2007)
        samples = [(Path(image), _voc_target(Path(xml), expected)) for image, xml in zip(voc.images, voc.annotations)]
        return samples, list(VOC_CLASSES), root / "VOCdevkit" / "VOC2007" / "JPEGImages"

    def _check_every_class(self, where: str) -> None:
        # Training counts difficult-only (-1) as positive, so a class needs an image with a nonzero target.
        present = torch.stack(self.targets).ne(0).any(dim=0).tolist()
        empty = [name for name, found in zip(self.classes, present, strict=True) if not found]
        if empty:
            raise S3LError(f"{where} has no usable image of class(es) {', '.join(empty)}: every class needs "
                           "training images")


def _voc_target(path: Path, expected: str) -> torch.Tensor:
    """The int8 target of the VOC annotation file `path` (1 / -1 difficult only / 0 absent per class)."""
    annotation = tvd.VOCDetection.parse_voc_xml(ElementTree.parse(path).getroot())["annotation"]
    target = torch.zeros(len(VOC_CLASSES), dtype=torch.int8)
    for item in annotation["object"]:
        if item.get("name") not in VOC_CLASSES:
            raise S3LError(f"VOC annotation '{display_path(path)}' names unknown class '{item.get('name')}': "
                           f"{expected}")
        index = VOC_CLASSES.index(item["name"])
        if item.get("difficult", "0") == "0":
            target[index] = 1
        elif target[index] == 0:
            target[index] = -1
    return target


def _expected(dataset: type) -> str:
    return dataset.LAYOUT + (DOWNLOAD_HINT if getattr(dataset, "DOWNLOADABLE", True) else "")


def _root_path(root: str | None, expected: str, download: bool) -> Path:
    if root is None:
        raise S3LError(f"dataset.root is not set: {expected}")
    # A download creates the folder.
    return Path(root).expanduser() if download else _existing_root(root, expected)


@contextmanager
def _torchvision_errors(root: Path, name: str, expected: str) -> Iterator[None]:
    """Turn what torchvision and the file parsers raise on an incomplete or broken copy into one S3LError."""
    try:
        yield
    except (RuntimeError, OSError, ValueError, KeyError, ElementTree.ParseError) as error:
        if isinstance(error, RuntimeError):  # torchvision's "Dataset not found or corrupted. You can use ..."
            reason = "torchvision: dataset not found or corrupted"
        elif isinstance(error, OSError) and error.filename:
            reason = f"cannot read '{display_path(error.filename)}': {error.strerror}"
        else:
            reason = " ".join(f"{type(error).__name__}: {error}".split())
        raise S3LError(
            f"dataset.root '{display_path(root)}' is not a complete {name} copy ({reason}): {expected}"
        ) from None
