"""A subset file list (`subset.json`): which images of a dataset's splits to keep, and its fingerprint.

`python -m s3l.subsets` writes one next to the subset it materialises; `dataset.subset=<path>` applies one in
place to the dataset under `dataset.root`, without copying or linking a file. The file holds, per split
("train", "test"), the sorted `[relative path, class]` pairs of the kept images. A path is relative to the
split's folder (`train/`, `val/`) in a class-folder tree, or to `images/` in the official CUB layout, so the
list holds on any machine that has the same dataset. `sha256` fingerprints that list alone (`list_sha256`);
results.json and the resized-image cache key record it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from s3l.data.images import display_path
from s3l.errors import S3LError

SUBSET_SPLITS = ("train", "test")


def list_sha256(splits: dict[str, list[list[str]]]) -> str:
    """The sha256 of the file lists, in a canonical JSON form (sorted keys, no spaces)."""
    canonical = json.dumps({split: splits[split] for split in SUBSET_SPLITS}, sort_keys=True,
                           separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Subset:
    """The kept images of each split, read from a subset.json at `path`."""

    path: str
    sha256: str
    splits: dict[str, list[list[str]]]

    @property
    def classes(self) -> set[str]:
        """The kept classes: those with a training image (both splits share this label space)."""
        return {name for _, name in self.splits["train"]}

    def record(self) -> dict:
        """What results.json and the cache key note about this subset."""
        return {"path": self.path, "sha256": self.sha256}

    def keep(
        self, samples: list[tuple[Path, int]], classes: list[str], base: Path, split: str
    ) -> tuple[list[tuple[Path, int]], list[str]]:
        """The listed samples of `split` (paths relative to `base`), relabelled 0..C-1 over the kept classes.

        Kept classes stay in the dataset's order, so a subset read in place has the labels of the same subset
        materialised as class folders (sorted names). A listed file the dataset lacks, or lists under another
        class, is one S3LError.
        """
        class_of = {_relative(path, base): classes[label] for path, label in samples}
        for relative, name in self.splits[split]:
            if class_of.get(relative) != name:
                found = "is not in it" if relative not in class_of else f"is of class '{class_of[relative]}' there"
                raise S3LError(
                    f"dataset.subset '{display_path(self.path)}' lists {split} image '{display_path(relative)}' "
                    f"of class '{name}', which {found} (under '{display_path(base)}'): point dataset.root at the "
                    "dataset the subset was built from"
                )
        kept_classes = [name for name in classes if name in self.classes]
        label_of = {name: label for label, name in enumerate(kept_classes)}
        listed = {relative for relative, _ in self.splits[split]}
        kept = [(path, label_of[classes[label]]) for path, label in samples if _relative(path, base) in listed]
        return kept, kept_classes


def read_subset(path: str) -> Subset:
    """The subset.json at `path`, checked: both splits listed as [path, class] pairs, sha256 matching if given."""
    where = f"dataset.subset '{display_path(path)}'"
    try:
        data = json.loads(Path(path).expanduser().read_text())
    except (OSError, ValueError) as error:
        raise S3LError(f"{where} cannot be read as JSON ({error}): give a subset.json written by "
                       "`python -m s3l.subsets`") from None
    splits = data.get("splits") if isinstance(data, dict) else None
    if not isinstance(splits, dict) or not all(_is_pair_list(splits.get(split)) for split in SUBSET_SPLITS):
        raise S3LError(f"{where} has no 'splits' with 'train' and 'test' lists of [path, class] pairs: give a "
                       "subset.json written by `python -m s3l.subsets`")
    if not splits["train"]:
        raise S3LError(f"{where} lists no training image: a subset needs at least one")
    sha256 = list_sha256(splits)
    # A hand-written list may leave sha256 out; a stated one that disagrees means the list was edited.
    if data.get("sha256", sha256) != sha256:
        raise S3LError(f"{where} states sha256 {data['sha256']} but its lists hash to {sha256}: the lists were "
                       "edited; remove the stale sha256 or restore the lists")
    return Subset(str(path), sha256, {split: splits[split] for split in SUBSET_SPLITS})


def _is_pair_list(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(pair, list) and len(pair) == 2 and all(isinstance(part, str) for part in pair) for pair in value
    )


def _relative(path: Path, base: Path) -> str:
    return Path(path).relative_to(base).as_posix()
