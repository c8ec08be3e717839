"""Seeded subsets of a class-folder dataset or CUB: `python -m s3l.subsets SOURCE OUT RULE [options]`.

    python -m s3l.subsets SOURCE OUT (--per-class N | --classes N | --fraction F | --total N)
                          [--seed S] [--val all|same] [--copy]

SOURCE is a class-folder tree (`train/<class>/*` and `val/<class>/*` or `test/<class>/*`) or CUB-200-2011 in its
official layout; it is read by the project's own dataset readers, so unusable files (a placeholder GIF, a broken
JPEG) are skipped as a training run skips them. The training images are chosen by one rule:

* `--per-class N`: N images of every class;
* `--classes N`: N classes, with all their images;
* `--fraction F`: a fraction F of every class's images (rounded, at least one);
* `--total N`: N images in all, as evenly spread over the classes as their sizes allow.

The test split is kept for the kept classes: whole (`--val all`, the default) or under the same per-class rule
(`--val same`: N per class, the training draw's per-class counts for `--total`, the same fraction, whole
classes for `--classes`).
OUT is written as a class-folder tree (`OUT/train/<class>/...`, `OUT/val/<class>/...`) of hard links, symbolic
links where hard links are impossible (another file system, a protected file), copies only with `--copy` or
where neither link works, with the file list in `OUT/subset.json` (s3l.data.subset), written last; that list
can also be used in place, without OUT's files, as `dataset.subset=OUT/subset.json`.

The upstream `create_small_imagenet.py` draws with an unseeded `np.random` (each run a different subset), copies
every file, writes no test split, and its "total" draws N images uniformly from the pool, so class sizes follow
the source's. Here every draw comes from one `numpy.random.Generator` seeded by `--seed`, and `--total` balances
the classes explicitly.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import sys
from collections import Counter
from pathlib import Path, PurePosixPath

import numpy as np

from s3l.checkpoints import write_atomically
from s3l.data.cub_metadata import find_official_cub
from s3l.data.datasets import CUB200, ImageFolderSplit, LabelledImages
from s3l.data.images import display_path
from s3l.data.subset import SUBSET_SPLITS, list_sha256
from s3l.errors import S3LError

RULES = ("per_class", "classes", "fraction", "total")
OUT_FOLDERS = {"train": "train", "test": "val"}  # the test split is written as val/, the upstream's name
# Tried in this order for each file; a copy only where neither link can be made (or with --copy).
PLACEMENTS = {
    "hard links": os.link,
    "symbolic links": lambda source, target: os.symlink(os.path.realpath(source), target),
    "copies": shutil.copy2,
}

JSON_STRING = r'"(?:[^"\\]|\\.)*"'  # a JSON string literal, escapes included
Selection = dict[str, dict[str, list[str]]]  # split -> class -> sorted relative paths


def read_source(source: str) -> tuple[str, dict[str, LabelledImages]]:
    """The dataset name ("cub200" for the official CUB layout, else "imagefolder") and both splits of SOURCE."""
    root = Path(source).expanduser()
    if not root.is_dir():
        raise S3LError(f"source '{display_path(source)}' does not exist or is not a folder")
    name, reader = ("cub200", CUB200) if find_official_cub(root) else ("imagefolder", ImageFolderSplit)
    return name, {split: reader(str(root), split, "skip") for split in SUBSET_SPLITS}


def by_class(dataset: LabelledImages) -> dict[str, list[str]]:
    """Class name -> the sorted paths of its images, relative to the dataset's base folder."""
    paths: dict[str, list[str]] = {name: [] for name in dataset.classes}
    for path, label in dataset.samples:
        paths[dataset.classes[label]].append(Path(path).relative_to(dataset.base).as_posix())
    return {name: sorted(files) for name, files in paths.items()}


def select(
    train: dict[str, list[str]], test: dict[str, list[str]], rule: str, value: float, val: str, seed: int
) -> Selection:
    """The training images chosen by `rule` (one of RULES) and the test images kept for their classes."""
    rng = np.random.default_rng(seed)
    if rule == "classes":
        kept = _draw(sorted(train), _check_count(int(value), len(train), "--classes", "classes"), rng)
        return {"train": {name: train[name] for name in kept}, "test": {name: test.get(name, []) for name in kept}}
    quotas = _train_quotas({name: len(files) for name, files in train.items()}, rule, value, rng)
    chosen = {name: _draw(train[name], quota, rng) for name, quota in quotas.items() if quota > 0}
    test_of_kept = {name: test.get(name, []) for name in chosen}
    if val == "all":
        return {"train": chosen, "test": test_of_kept}
    test_quotas = {
        name: _fraction_of(len(files), value) if rule == "fraction" else len(chosen[name])
        for name, files in test_of_kept.items()
    }
    for name, quota in test_quotas.items():
        _check_count(quota, len(test_of_kept[name]), "--val same", f"test images of class '{name}'")
    return {"train": chosen, "test": {name: _draw(test_of_kept[name], q, rng) for name, q in test_quotas.items()}}


def _train_quotas(counts: dict[str, int], rule: str, value: float, rng: np.random.Generator) -> dict[str, int]:
    if rule == "fraction":
        return {name: _fraction_of(count, value) for name, count in counts.items()}
    if rule == "per_class":
        smallest = min(counts, key=lambda name: (counts[name], name))
        _check_count(int(value), counts[smallest], "--per-class", f"training images in class '{smallest}'")
        return dict.fromkeys(counts, int(value))
    return balanced_quotas(counts, _check_count(int(value), sum(counts.values()), "--total", "training images"), rng)


def balanced_quotas(counts: dict[str, int], total: int, rng: np.random.Generator) -> dict[str, int]:
    """Per-class counts summing to `total` (at most the sum of `counts`), as equal as the class sizes allow.

    Classes smaller than an even share give all their images and the others share the rest; the remainder of
    that share (fewer images than classes) goes one each to classes drawn at random.
    """
    quotas = dict.fromkeys(counts, 0)
    open_classes = sorted(counts, key=lambda name: (counts[name], name))
    left = total
    while open_classes and counts[open_classes[0]] <= left // len(open_classes):
        name = open_classes.pop(0)
        quotas[name], left = counts[name], left - counts[name]
    if open_classes:
        share, extra = divmod(left, len(open_classes))
        lucky = set(rng.choice(len(open_classes), size=extra, replace=False).tolist())
        for index, name in enumerate(open_classes):
            quotas[name] = share + (index in lucky)
    return quotas


def _fraction_of(count: int, fraction: float) -> int:
    return max(1, round(fraction * count))  # at least one, so that no class vanishes from the subset


def _draw(items: list[str], count: int, rng: np.random.Generator) -> list[str]:
    """`count` of `items` drawn without replacement, sorted."""
    return sorted(items[index] for index in rng.choice(len(items), size=count, replace=False))


def _check_count(wanted: int, available: int, flag: str, what: str) -> int:
    if wanted < 1:
        raise S3LError(f"{flag} must be at least 1, got {wanted}")
    if wanted > available:
        raise S3LError(f"{flag} asks for {wanted} but there are only {available} usable {what}")
    return wanted


def materialise(selection: Selection, bases: dict[str, Path], out: Path, copy: bool) -> Counter:
    """Write the selection as OUT/train/<class>/... and OUT/val/<class>/...; how many files each way was placed.

    A file's place inside its class folder is its source path less the first folder (the class folder in a
    class-folder tree, the image folder in CUB's images/).
    """
    placed: Counter = Counter()
    for split, classes in selection.items():
        for name, paths in classes.items():
            for relative in paths:
                parts = PurePosixPath(relative).parts
                target = out / OUT_FOLDERS[split] / name / Path(*(parts[1:] or parts))
                target.parent.mkdir(parents=True, exist_ok=True)
                placed[_place(bases[split] / relative, target, copy)] += 1
    return placed


def _place(source: Path, target: Path, copy: bool) -> str:
    """Place `source` at `target` the first way that works (the last way's failure is raised); which way."""
    *tries, last = ["copies"] if copy else list(PLACEMENTS)
    for way in tries:
        with contextlib.suppress(OSError):
            PLACEMENTS[way](source, target)
            return way
    PLACEMENTS[last](source, target)
    return last


def subset_record(source: str, name: str, rule: str, value: float, val: str, seed: int, selection: Selection) -> dict:
    """The content of subset.json: where and how the subset was drawn, its file lists and their sha256."""
    splits = {
        split: sorted([path, class_name] for class_name, paths in selection[split].items() for path in paths)
        for split in SUBSET_SPLITS
    }
    return {"source": str(Path(source).expanduser().resolve()), "dataset": name, "rule": {rule: value},
            "val": val, "seed": seed, "splits": splits, "sha256": list_sha256(splits)}


def subset_json(record: dict) -> str:
    """`record` as indented JSON text with each [path, class] pair on one line (a short file for a big list)."""
    text = json.dumps(record, indent=1)
    return re.sub(rf"\[\n\s+({JSON_STRING}),\n\s+({JSON_STRING})\n\s+\]", r"[\1, \2]", text) + "\n"


def build_subset(source: str, out: str, rule: str, value: float, seed: int, val: str, copy: bool) -> str:
    """Build the subset in OUT (which must not exist or be empty) and return the line that says what was built."""
    out_path = Path(out).expanduser()
    if out_path.exists() and (not out_path.is_dir() or any(out_path.iterdir())):
        raise S3LError(f"output '{display_path(out)}' exists and is not an empty folder: choose a new one")
    if rule == "fraction" and not 0 < value <= 1:
        raise S3LError(f"--fraction must be in (0, 1], got {value}")
    name, datasets = read_source(source)
    selection = select(by_class(datasets["train"]), by_class(datasets["test"]), rule, value, val, seed)
    record = subset_record(source, name, rule, value, val, seed, selection)
    out_path.mkdir(parents=True, exist_ok=True)
    placed = materialise(selection, {split: datasets[split].base for split in SUBSET_SPLITS}, out_path, copy)
    write_atomically(out_path / "subset.json", lambda tmp: tmp.write_text(subset_json(record)))
    counts = {split: len(record["splits"][split]) for split in SUBSET_SPLITS}
    skipped = sum(len(dataset.skipped) for dataset in datasets.values())
    ways = ", ".join(f"{count} {way}" for way, count in placed.items())
    return (f"built {counts['train']} train + {counts['test']} val images of {len(selection['train'])} classes "
            f"({rule}={value:g}, seed {seed}, val {val}) from {name} '{display_path(source)}' "
            f"({skipped} unusable file(s) left out) in '{display_path(out)}' as {ways}; "
            f"list: subset.json, sha256 {record['sha256'][:16]}")


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse prints usage too; bad input here is one line
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = _OneLineParser(prog="python -m s3l.subsets", description=__doc__.split("\n", 1)[0])
    parser.add_argument("source", help="class-folder tree (train/ + val/) or CUB_200_2011 (official layout)")
    parser.add_argument("out", help="new folder for the subset (train/, val/, subset.json)")
    rules = parser.add_mutually_exclusive_group(required=True)
    rules.add_argument("--per-class", type=int, help="N training images of every class")
    rules.add_argument("--classes", type=int, help="N classes with all their images")
    rules.add_argument("--fraction", type=float, help="fraction F of every class's training images")
    rules.add_argument("--total", type=int, help="N training images in all, balanced over the classes")
    parser.add_argument("--seed", type=int, default=0, help="seed of every draw (default 0)")
    parser.add_argument("--val", choices=("all", "same"), default="all",
                        help="keep the kept classes' whole test split (all) or apply the per-class rule (same)")
    parser.add_argument("--copy", action="store_true", help="copy the files instead of linking them")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rule = next(rule for rule in RULES if getattr(args, rule) is not None)
    logging.getLogger("s3l.data").setLevel(logging.ERROR)  # skipped files are counted in the printed line
    try:
        print(build_subset(args.source, args.out, rule, getattr(args, rule), args.seed, args.val, args.copy))
    except (S3LError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
