"""The official CUB-200-2011 layout: `images.txt`, `train_test_split.txt`, `image_class_labels.txt` and
`classes.txt`, joined on their ids, read as strictly as data that decides a benchmark deserves.

Every metadata line is checked: ids are unique ASCII integers, text is UTF-8, and every image path is
relative, stays inside `images/` and names a regular file. A problem is one S3LError naming the file and
line, never a traceback or a silently different dataset.
"""

from __future__ import annotations

import codecs
import functools
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from s3l.data.images import display_path
from s3l.errors import S3LError

CUB_DIR = "CUB_200_2011"
CUB_FILES = ("images.txt", "train_test_split.txt", "image_class_labels.txt", "classes.txt")
CUB_ARCHIVE = "official archive: CUB_200_2011.tgz from https://data.caltech.edu/records/65de6-vp158"
CUB_LAYOUT = (
    f"expected {CUB_DIR}/ with {', '.join(CUB_FILES)} and images/ ({CUB_ARCHIVE}), "
    "or train/ and val/ class folders"
)
# What a path named in metadata is when it is not a regular file (anything else is a device).
FILE_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"))


def find_official_cub(root: Path) -> Path | None:
    """The folder holding the official CUB files (root or root/CUB_200_2011), or None if neither has any."""
    for candidate in (root, root / CUB_DIR):
        present = [name for name in (*CUB_FILES, "images") if (candidate / name).exists()]
        if not present:
            continue
        missing = [name for name in (*CUB_FILES, "images/") if not (candidate / name).exists()]
        if missing:
            raise S3LError(f"CUB folder '{display_path(candidate)}' lacks {', '.join(missing)}: {CUB_LAYOUT}")
        return candidate
    if not (root / "train").is_dir():
        raise S3LError(
            f"dataset.root '{display_path(root)}' has neither {CUB_DIR}/ ({', '.join(CUB_FILES)}, images/) "
            f"nor train/ and val/ class folders: {CUB_LAYOUT}"
        )
    return None


def read_official_cub(folder: Path, split: str) -> tuple[list[tuple[Path, int]], list[str]]:
    """Samples and class names of `split`, starting from images.txt and joining the other files on id."""
    paths = _read_image_list(folder)
    is_train = _read_table(folder / "train_test_split.txt")
    class_of = _read_table(folder / "image_class_labels.txt")
    class_names = _read_table(folder / "classes.txt")
    for table, name in ((is_train, "train_test_split.txt"), (class_of, "image_class_labels.txt")):
        absent = [image_id for image_id in paths if image_id not in table]
        if absent:
            raise S3LError(
                f"'{display_path(folder / name)}' lacks image id {absent[0]} listed in images.txt: "
                f"{CUB_LAYOUT}"
            )
    flags = {is_train[image_id] for image_id in paths} - {"0", "1"}
    if flags:
        raise S3LError(
            f"'{display_path(folder / 'train_test_split.txt')}' has split flag {flags.pop()!r}, "
            "expected 1 (train) or 0 (test)"
        )
    labels_file = f"'{display_path(folder / 'image_class_labels.txt')}'"
    class_ids = sorted({_as_id(class_of[image_id], labels_file) for image_id in paths})
    unnamed = [class_id for class_id in class_ids if class_id not in class_names]
    if unnamed:
        raise S3LError(f"'{display_path(folder / 'classes.txt')}' lacks class id {unnamed[0]}: {CUB_LAYOUT}")
    label_of = {class_id: label for label, class_id in enumerate(class_ids)}
    wanted = "1" if split == "train" else "0"
    samples = [
        (path, label_of[int(class_of[image_id])])
        for image_id, path in paths.items()
        if is_train[image_id] == wanted
    ]
    return samples, [class_names[class_id] for class_id in class_ids]


def _read_image_list(folder: Path) -> dict[int, Path]:
    """images.txt as {id: path under images/}, each path checked to name a file inside images/ only once."""
    source, images = folder / "images.txt", str(folder / "images")
    # Lines repeat their class folder, so each folder's real path is looked up once.
    real_folder = functools.lru_cache(maxsize=None)(os.path.realpath)
    paths, line_of = {}, {}
    for number, image_id, relative in _table_rows(source):
        real = _listed_image(images, relative, real_folder, _line(source, number))
        if real in line_of:
            raise S3LError(
                f"{_line(source, number)} lists '{display_path(relative)}' again (first on line "
                f"{line_of[real]}): each image must appear once (a repeat is trained twice or sits in both "
                "splits)"
            )
        line_of[real] = number
        paths[image_id] = Path(images, relative)
    return paths


def _listed_image(images: str, relative: str, real_folder: Callable[[str], str], where: str) -> str:
    """The real path of `relative` (read at `where`): inside `images`, a regular file or missing."""
    if os.path.isabs(relative) or ".." in relative.split("/"):
        raise S3LError(
            f"{where} names '{display_path(relative)}', which is not a path inside images/: "
            f"write it relative to '{display_path(images)}', without '..'"
        )
    folder, name = os.path.split(os.path.join(images, relative))
    real = os.path.join(real_folder(folder), name)
    if os.path.islink(real):
        real = os.path.realpath(real)
    # images/ may itself be a link (it is resolved too), but an entry whose real location is outside it is
    # refused: an unpacked archive can carry links to any file on the machine, and the metadata promises
    # files of this dataset.
    inside = os.path.join(real_folder(images), "")
    if not real.startswith(inside):
        raise S3LError(
            f"{where} names '{display_path(relative)}', which resolves to '{display_path(real)}' outside "
            f"'{display_path(inside)}': move the file into images/ (or link images/ as a whole)"
        )
    try:
        mode = os.stat(real).st_mode
    except OSError:  # missing or unreadable: the bad-image policy reports it with the other unusable images
        return real
    if not stat.S_ISREG(mode):
        kind = next((name for is_kind, name in FILE_KINDS if is_kind(mode)), "a device")
        raise S3LError(
            f"{where} names '{display_path(relative)}', which is {kind}, not an image file: fix the line"
        )
    return real


def _read_table(path: Path) -> dict[int, str]:
    """A CUB metadata file, "<id> <value>" per line, as {id: value}."""
    return {row_id: value for _, row_id, value in _table_rows(path)}


def _table_rows(path: Path) -> Iterator[tuple[int, int, str]]:
    """(line number, id, value) for each non-blank line of a CUB metadata file, whose ids must be unique."""
    line_of = {}
    for number, line in enumerate(_metadata_lines(path), start=1):
        parts = line.split(maxsplit=1)
        if not parts:
            continue
        if len(parts) != 2:
            raise S3LError(f"{_line(path, number)} is not '<id> <value>': {line.strip()!r}; {CUB_LAYOUT}")
        row_id = _as_id(parts[0], _line(path, number))
        if row_id in line_of:
            raise S3LError(
                f"{_line(path, number)} repeats id {row_id} of line {line_of[row_id]}: "
                f"each id must appear once; restore the file from the {CUB_ARCHIVE}"
            )
        line_of[row_id] = number
        yield number, row_id, parts[1].strip()


def _metadata_lines(path: Path) -> list[str]:
    """The lines of a metadata file, which must be readable UTF-8 (a byte-order mark is allowed)."""
    try:
        data = path.read_bytes()
    except OSError as error:  # a folder in its place, no permission, an I/O error
        raise S3LError(
            f"cannot read '{display_path(path)}' ({error.strerror or error}): it must be a readable text "
            f"file; restore it from the {CUB_ARCHIVE}"
        ) from None
    # Decoded line by line, so that a bad byte is reported with its line number.
    lines = []
    for number, line in enumerate(data.removeprefix(codecs.BOM_UTF8).splitlines(), start=1):
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError as error:
            raise S3LError(
                f"{_line(path, number)} is not UTF-8 text (byte 0x{line[error.start]:02x} at column "
                f"{error.start + 1}): save the file as UTF-8 or restore it from the {CUB_ARCHIVE}"
            ) from None
    return lines


def _line(path: Path, number: int) -> str:
    return f"'{display_path(path)}' line {number}"


def _as_id(text: str, where: str) -> int:
    # isdigit() alone accepts digits such as "²" that int() refuses.
    if not (text.isascii() and text.isdigit()):
        raise S3LError(f"{where} has id {text!r} where a positive integer was expected: {CUB_LAYOUT}")
    return int(text)
