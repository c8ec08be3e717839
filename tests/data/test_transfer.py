"""Transfer datasets on tiny fake copies of their official layouts, written here (never downloaded)."""

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio
import torch
import torchvision.datasets as tvd
import torchvision.datasets.cifar
import torchvision.datasets.flowers102
from PIL import Image

from s3l.data.transfer import (
    CIFAR,
    VOC2007,
    VOC_CLASSES,
    Caltech101,
    FGVCAircraft,
    Flowers102,
    OxfordPets,
    StanfordCars,
)
from s3l.errors import S3LError

FILE_BACKED = (StanfordCars, FGVCAircraft, OxfordPets, Caltech101, Flowers102, VOC2007)
ALL = (*FILE_BACKED, CIFAR)


def _jpeg(path: Path, shade: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), (shade, 80, 160)).save(path, "JPEG")


def _text(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def _build(dataset, root, split, **kwargs):
    if dataset is CIFAR:
        return CIFAR(str(root), split, num_classes=10)
    return dataset(str(root), split, **kwargs)


@pytest.fixture(autouse=True)
def _md5_is_file_exists(monkeypatch):
    # The fake annotation files cannot match the real md5 sums that torchvision checks.
    for module in (torchvision.datasets.flowers102, torchvision.datasets.cifar):
        monkeypatch.setattr(module, "check_integrity", lambda path, md5=None: os.path.isfile(path))


def _cars(root: Path) -> Path:
    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    sio.savemat(base / "devkit" / "cars_meta.mat",
                {"class_names": np.array(["AM General Hummer", "Acura RL", "Audi R8"], dtype=object)})
    splits = {"train": ("devkit/cars_train_annos.mat", [1, 1, 2, 2, 3]),
              "test": ("cars_test_annos_withlabels.mat", [1, 2, 3])}
    for split, (annotations, classes) in splits.items():
        names = [f"{index:05d}.jpg" for index in range(1, len(classes) + 1)]
        for index, name in enumerate(names):
            _jpeg(base / f"cars_{split}" / name, index)
        records = np.array(list(zip(names, classes)), dtype=[("fname", object), ("class", object)])
        sio.savemat(base / annotations, {"annotations": records})
    return root


def _aircraft(root: Path) -> Path:
    data = root / "fgvc-aircraft-2013b" / "data"
    _text(data / "variants.txt", ["707-320", "A300B4", "F/A-18"])
    _text(data / "images_variant_trainval.txt",
          ["0000001 707-320", "0000002 A300B4", "0000003 F/A-18", "0000004 F/A-18"])
    _text(data / "images_variant_test.txt", ["0000005 707-320", "0000006 A300B4", "0000007 F/A-18"])
    for index in range(1, 8):
        _jpeg(data / "images" / f"{index:07d}.jpg", index)
    return root


def _pets(root: Path, broken: bool = False) -> Path:
    base = root / "oxford-iiit-pet"
    trainval = ["Abyssinian_1 1 1 1", "american_bulldog_1 2 2 1", "american_bulldog_2 2 2 1",
                "Bengal_1 3 1 1"]
    test = ["Abyssinian_2 1 1 1", "american_bulldog_3 2 2 1", "Bengal_2 3 1 1"]
    for line in trainval + test:
        _jpeg(base / "images" / f"{line.split()[0]}.jpg")
    if broken:
        trainval.append("Bengal_3 3 1 1")
        (base / "images" / "Bengal_3.jpg").write_bytes(b"not a jpeg")
    _text(base / "annotations" / "trainval.txt", trainval)
    _text(base / "annotations" / "test.txt", test)
    return root


def _caltech(root: Path) -> Path:
    for name in ("BACKGROUND_Google", "accordion", "airplanes"):
        for index in range(1, 7):
            _jpeg(root / "101_ObjectCategories" / name / f"image_{index:04d}.jpg", index)
    return root


def _flowers(root: Path) -> Path:
    base = root / "flowers-102"
    labels = [1, 2, 3, 1, 2, 3, 1, 2, 3]
    for image_id in range(1, len(labels) + 1):
        _jpeg(base / "jpg" / f"image_{image_id:05d}.jpg", image_id)
    sio.savemat(base / "imagelabels.mat", {"labels": np.array(labels)})
    sio.savemat(base / "setid.mat", {"trnid": np.array([1, 2, 3]), "valid": np.array([4, 5, 6]),
                                     "tstid": np.array([7, 8, 9])})
    return root


CIFAR_FILES = {  # num_classes: folder, batch files (train then test), meta file, label key, names key
    10: ("cifar-10-batches-py", [f"data_batch_{n}" for n in range(1, 6)] + ["test_batch"], "batches.meta",
         "labels", "label_names"),
    100: ("cifar-100-python", ["train", "test"], "meta", "fine_labels", "fine_label_names"),
}


def _cifar(root: Path, num_classes: int) -> Path:
    rng = np.random.default_rng(0)
    folder, batches, meta, labels_key, names_key = CIFAR_FILES[num_classes]
    (root / folder).mkdir(parents=True)
    for batch in batches:
        pixels = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        entry = {"data": pixels, labels_key: [0, 1, 2, num_classes - 1]}
        (root / folder / batch).write_bytes(pickle.dumps(entry))
    names = [f"class{index}" for index in range(num_classes)]
    (root / folder / meta).write_bytes(pickle.dumps({names_key: names}))
    return root


VOC_OBJECTS = {  # image id: split, [(class, difficult)]
    "000001": ("trainval", [(name, 0) for name in VOC_CLASSES[:10]] + [("dog", 1)]),
    "000002": ("trainval", [(name, 0) for name in VOC_CLASSES[10:19]]
               + [("tvmonitor", 1), ("tvmonitor", 1)]),
    "000003": ("test", [("cat", 0), ("cat", 1), ("dog", 1)]),
    "000004": ("test", [("person", 0)]),
}


def _voc(root: Path) -> Path:
    base = root / "VOCdevkit" / "VOC2007"
    for image_id, (_, objects) in VOC_OBJECTS.items():
        _jpeg(base / "JPEGImages" / f"{image_id}.jpg")
        items = "".join(f"<object><name>{name}</name><difficult>{difficult}</difficult></object>"
                        for name, difficult in objects)
        xml = f"<annotation><filename>{image_id}.jpg</filename>{items}</annotation>"
        _text(base / "Annotations" / f"{image_id}.xml", [xml])
    for part in ("trainval", "test"):
        ids = [image_id for image_id, (image_part, _) in VOC_OBJECTS.items() if image_part == part]
        _text(base / "ImageSets" / "Main" / f"{part}.txt", ids)
    return root


def _check_splits(train, test, classes, train_labels, test_labels):
    assert train.classes == test.classes == classes
    assert (train.targets, test.targets) == (train_labels, test_labels)
    assert not {path for path, _ in train.samples} & {path for path, _ in test.samples}
    image, label = train[0]
    assert image.mode == "RGB" and label == train_labels[0]
    assert train.skipped == [] and train.multilabel is False


def test_stanford_cars_reads_torchvision_layout(tmp_path):
    root = _cars(tmp_path)
    train, test = StanfordCars(str(root), "train"), StanfordCars(str(root), "test")
    _check_splits(train, test, ["AM General Hummer", "Acura RL", "Audi R8"], [0, 0, 1, 1, 2], [0, 1, 2])
    assert train.base == root / "stanford_cars" / "cars_train"


def test_aircraft_train_is_trainval(tmp_path):
    root = _aircraft(tmp_path)
    train, test = FGVCAircraft(str(root), "train"), FGVCAircraft(str(root), "test")
    _check_splits(train, test, ["707-320", "A300B4", "F/A-18"], [0, 1, 2, 2], [0, 1, 2])


def test_pets_reads_trainval_and_test(tmp_path):
    root = _pets(tmp_path)
    train, test = OxfordPets(str(root), "train"), OxfordPets(str(root), "test")
    _check_splits(train, test, ["Abyssinian", "American Bulldog", "Bengal"], [0, 1, 1, 2], [0, 1, 2])


def test_pets_skips_a_broken_image(tmp_path):
    root = _pets(tmp_path, broken=True)
    train = OxfordPets(str(root), "train", bad_images="skip")
    assert train.skipped == [root / "oxford-iiit-pet" / "images" / "Bengal_3.jpg"]
    assert len(train) == 4
    with pytest.raises(S3LError, match="Bengal_3.jpg"):
        OxfordPets(str(root), "train", bad_images="fail")


def test_pets_subset_paths_are_relative_to_images(tmp_path):
    root = _pets(tmp_path)
    subset = tmp_path / "subset.json"
    splits = {"train": [["Abyssinian_1.jpg", "Abyssinian"], ["Bengal_1.jpg", "Bengal"]],
              "test": [["Bengal_2.jpg", "Bengal"]]}
    subset.write_text(json.dumps({"splits": splits}))
    train = OxfordPets(str(root), "train", subset=str(subset))
    test = OxfordPets(str(root), "test", subset=str(subset))
    assert train.classes == test.classes == ["Abyssinian", "Bengal"]
    assert (train.targets, test.targets) == ([0, 1], [1])
    assert train.subset is not None and train.subset.path == str(subset)


def test_caltech_keeps_background_class_and_splits_per_class(tmp_path):
    root = _caltech(tmp_path)
    train = Caltech101(str(root), "train", train_per_class=2)
    test = Caltech101(str(root), "test", train_per_class=2)
    _check_splits(train, test, ["BACKGROUND_Google", "accordion", "airplanes"], [0, 0, 1, 1, 2, 2],
                  [0] * 4 + [1] * 4 + [2] * 4)
    assert len({path for path, _ in train.samples + test.samples}) == 18


def test_caltech_split_is_fixed_by_seed(tmp_path):
    root = _caltech(tmp_path)

    def train(seed: int) -> Caltech101:
        return Caltech101(str(root), "train", train_per_class=3, split_seed=seed)

    assert train(0).samples == train(0).samples
    assert train(0).samples != train(1).samples
    assert np.bincount(train(1).targets).tolist() == [3, 3, 3]


def test_caltech_accepts_torchvision_download_folder(tmp_path):
    _caltech(tmp_path / "caltech101")
    assert len(Caltech101(str(tmp_path), "test", train_per_class=5)) == 3


def test_flowers_train_is_train_plus_val(tmp_path, monkeypatch):
    # A 3-class copy: every class of the training split needs an image.
    monkeypatch.setattr(tvd.Flowers102, "classes", ["pink primrose", "hard-leaved pocket orchid", "bells"])
    root = _flowers(tmp_path)
    train, test = Flowers102(str(root), "train"), Flowers102(str(root), "test")
    _check_splits(train, test, tvd.Flowers102.classes, [0, 1, 2, 0, 1, 2], [0, 1, 2])


@pytest.mark.parametrize("num_classes", [10, 100])
def test_cifar_in_memory(tmp_path, num_classes):
    root = _cifar(tmp_path, num_classes)
    train, test = CIFAR(str(root), "train", num_classes), CIFAR(str(root), "test", num_classes)
    assert (len(train), len(test)) == ((20 if num_classes == 10 else 4), 4)
    assert train.targets[:4] == test.targets == [0, 1, 2, num_classes - 1]
    assert len(train.classes) == num_classes and train.skipped == [] and train.multilabel is False
    image, label = test[3]
    assert image.mode == "RGB" and image.size == (32, 32) and label == num_classes - 1


def test_voc2007_multilabel_targets(tmp_path):
    root = _voc(tmp_path)
    train, test = VOC2007(str(root), "train"), VOC2007(str(root), "test")
    assert VOC2007.multilabel is True and len(train.classes) == 20 and train.classes[-1] == "tvmonitor"
    assert (len(train), len(test)) == (2, 2)
    first, second = train.targets
    assert first.dtype == torch.int8 and first[:10].tolist() == [1] * 10 and first[11].item() == -1  # dog
    assert second[10:19].tolist() == [1] * 9 and second[19].item() == -1 and second[:10].tolist() == [0] * 10
    cat, dog, person = (train.classes.index(name) for name in ("cat", "dog", "person"))
    image, target = test[0]
    assert image.mode == "RGB"
    assert (target[cat].item(), target[dog].item(), int(target.abs().sum())) == (1, -1, 2)
    assert test.targets[1].nonzero().flatten().tolist() == [person]


def test_voc2007_train_needs_every_class(tmp_path):
    root = _voc(tmp_path)
    trainval = root / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "trainval.txt"
    trainval.write_text("000001\n")
    with pytest.raises(S3LError, match="no usable image of class"):
        VOC2007(str(root), "train")


def test_folder_copy_is_read_when_train_folder_exists(tmp_path):
    for split, count in (("train", 2), ("val", 1)):
        for name in ("707-320", "A300B4"):
            for index in range(count):
                _jpeg(tmp_path / split / name / f"{index}.jpg")
    train, test = FGVCAircraft(str(tmp_path), "train"), FGVCAircraft(str(tmp_path), "test")
    _check_splits(train, test, ["707-320", "A300B4"], [0, 0, 1, 1], [0, 1])
    assert test.base == tmp_path / "val"


@pytest.mark.parametrize("dataset", ALL, ids=lambda dataset: dataset.__name__)
@pytest.mark.parametrize("state", ["missing", "empty"])
def test_missing_or_empty_root_is_one_line_naming_the_layout(tmp_path, dataset, state):
    root = tmp_path / "copy"
    if state == "empty":
        root.mkdir()
    with pytest.raises(S3LError) as error:
        _build(dataset, root, "train")
    message = str(error.value)
    assert "\n" not in message and str(root) in message and dataset.LAYOUT in message
    assert ("dataset.download=true" in message) == (dataset is not StanfordCars)


def test_voc2007_refuses_a_subset_list(tmp_path):
    with pytest.raises(S3LError, match="dataset.subset does not apply to VOC2007: subset lists give one class per image"):
        VOC2007(str(_voc(tmp_path)), "train", subset=str(tmp_path / "subset.json"))
