"""Streaming shards for data that outgrows one machine (`dataset.format=litdata`): Lightning's LitData.

The memory-mapped cache (`s3l.data.cache`) is one raw-pixel file per dataset and size on the local disk: right for
CUB's 6k images, about 300 GiB for ImageNet at 112 px (248 KiB per image, docs/benchmarks.md), and no help to a
second node. Here the same resized images
(short side just large enough for the pretraining crops, `cache_short_side`) are written once by
`litdata.optimize`, in parallel over processes, as compressed chunks (JPEG at `dataset.stream.quality`, or raw
pixels, lossless), and read back by LitData's `StreamingDataset` / `StreamingDataLoader`: from a local folder or
object storage (`s3://...`, chunks downloaded ahead and cached locally), each rank and worker streaming its own
share of the chunks, shuffled chunk-wise per epoch, and resumable mid-epoch (`StreamDataModule` keeps the loader's
position in every checkpoint, so a resumed run continues the epoch where it stopped, with no sample seen twice).

The views of an image are seeded from (seed, epoch, sample) as on the file path (`s3l.data.sampling`), so the same
augmentations come whatever the worker or rank that streams it. Shards are keyed like the cache (dataset, subset,
split, stored size, storage) and built under a lock into a temporary folder renamed into place; shards in object
storage are read as they are (build them locally, upload the folder, point `dataset.stream.dir` at its parent).
"""

from __future__ import annotations

import io
import json
import logging
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import torch
from litdata import StreamingDataLoader, StreamingDataset, optimize
from omegaconf import DictConfig
from PIL import Image
from torch.utils.data import Dataset

from s3l.callbacks.checkpointing import rng_states, set_rng_states
from s3l.config import StageSpec
from s3l.data.cache import build_once, cache_key, load_resized, stored_meta, stored_size, views_short_side
from s3l.data.datamodule import StageDataModule, pretrain_transform
from s3l.data.images import load_rgb
from s3l.data.sampling import sample_seed, seeded_draws, stage_seed
from s3l.data.views import view_specs
from s3l.errors import S3LError

logger = logging.getLogger("s3l")

STORAGES = ("jpeg", "raw")
INDEX_FILE = "index.json"  # LitData's index of the chunks: a finished shard folder has it
META_FILE = "s3l_meta.json"  # ours: the classes, samples and skipped files of the dataset the shards hold


def is_remote(location: str) -> bool:
    return "://" in location


def shard_name(dataset: Dataset, split: str, short_side: int, storage: str, quality: int) -> str:
    kind = f"jpeg{quality}" if storage == "jpeg" else "raw"
    return (f"{type(dataset).__name__.lower()}_{split}_{len(dataset.samples)}img_{short_side}px_{kind}_"
            + cache_key(dataset, short_side))


class ResizedItem:
    """What `litdata.optimize` stores for one sample index: its resized pixels (JPEG bytes or a uint8 array),
    label and index. A callable object so that optimize's worker processes can receive it."""

    def __init__(self, dataset: Dataset, short_side: int, storage: str, quality: int) -> None:
        self.samples = [(str(path), int(label)) for path, label in dataset.samples]
        self.short_side, self.storage, self.quality = short_side, storage, quality

    def __call__(self, index: int) -> dict:
        path, label = self.samples[index]
        pixels = load_resized(Path(path), stored_size(Path(path), self.short_side))
        if self.storage == "raw":
            image: bytes | np.ndarray = pixels
        else:
            buffer = io.BytesIO()
            # 4:4:4 (no chroma subsampling): small stored images keep their colour edges.
            Image.fromarray(pixels).save(buffer, format="JPEG", quality=self.quality, subsampling=0)
            image = buffer.getvalue()
        return {"index": index, "label": label, "image": image}


def build_shards(dataset: Dataset, split: str, short_side: int, stream: dict) -> str:
    """The shard location of `dataset` at `short_side`, built now (local folders only) unless it exists."""
    if not hasattr(dataset, "samples"):
        raise S3LError(f"dataset.format=litdata needs a dataset read from files, not {type(dataset).__name__}: "
                       "use dataset.format=files for it")
    storage, quality = stream["storage"], int(stream["quality"])
    name = shard_name(dataset, split, short_side, storage, quality)
    location = str(stream["dir"]).rstrip("/")
    if is_remote(location):
        return f"{location}/{name}"

    def write(folder: Path) -> None:
        start = time.perf_counter()
        optimize(fn=ResizedItem(dataset, short_side, storage, quality), inputs=list(range(len(dataset))),
                         output_dir=str(folder), num_workers=int(stream["build_workers"]),
                         chunk_bytes=str(stream["chunk_bytes"]), mode="overwrite", verbose=False,
                         # each worker writes a fixed slice in order: the same shards from every build,
                         # so a run on rebuilt shards sees the same order as on the first ones
                         keep_data_ordered=True, reorder_files=False,
                         # fork: workers start in milliseconds (spawn re-imports torch in each: ~10 s) and
                         # only decode and encode images, never touching a GPU.
                         start_method="fork")
        meta = {"storage": storage, "quality": quality, **stored_meta(dataset, short_side)}
        (folder / META_FILE).write_text(json.dumps(meta))
        seconds = time.perf_counter() - start
        logger.info("built %d %s shards of %s at %d px in %.1f s (%.0f images/s)", len(dataset), storage,
                    split, short_side, seconds, len(dataset) / max(seconds, 1e-9))

    final = Path(location).expanduser() / name
    states = rng_states()  # optimize draws from the global generators: the run that builds must train as one
    try:                   # that finds the shards built
        build_once(final, INDEX_FILE, write)
    finally:
        set_rng_states(states)
    return str(final)


def decode(item: dict) -> Image.Image:
    image = item["image"]
    if isinstance(image, np.ndarray):
        return Image.fromarray(image)
    return load_rgb(io.BytesIO(image))


class ShardImages(Dataset):
    """Every image of a shard folder by index, as `(PIL RGB image, label)` like `LabelledImages`: for the kNN
    monitor and evaluation, which read whole splits on every rank (no sharding, no shuffle)."""

    def __init__(self, location: str, max_cache_size: str) -> None:
        self.stream = StreamingDataset(location, max_cache_size=max_cache_size)

    def __len__(self) -> int:
        return len(self.stream)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        item = self.stream[index]
        return decode(item), int(item["label"])


class StreamedViews(StreamingDataset):
    """The training split as LitData streams it: its chunks shared out over ranks and workers and shuffled per
    epoch (seeded), every image seen through `transform` with draws seeded from (seed, epoch, sample)."""

    def __init__(self, location: str, transform: Callable, seed: int, max_cache_size: str) -> None:
        # LitData's shuffle seeds numpy's legacy generator, which takes 32 bits; the views keep the full seed.
        super().__init__(location, shuffle=True, drop_last=True, seed=seed % 2**32, max_cache_size=max_cache_size)
        self.views, self.view_seed = transform, seed

    def __getitem__(self, index):
        item = super().__getitem__(index)
        with seeded_draws(sample_seed(self.view_seed, self.current_epoch, int(item["index"]))):
            return self.views(decode(item)), int(item["label"])


class PositionedLoader(StreamingDataLoader):
    """LitData's loader, whose position `StreamDataModule` keeps instead of Lightning (see there): with its
    `state_dict` hidden, Lightning treats it as a plain loader."""

    state_dict = None  # type: ignore[assignment]
    load_state_dict = None  # type: ignore[assignment]


class StreamDataModule(StageDataModule):
    """The pretraining loader over streamed shards: LitData's loader, resumed mid-epoch where it stopped.

    The position is kept here, in the datamodule's state (Lightning saves it in every checkpoint and gives it
    back before the loader exists), not by Lightning's own handling of loaders with a state: that restores a
    loader only if it is created after the checkpoint is read, and the LR schedule's step count creates it
    before. A position saved at an epoch's end means "the next epoch, from its start" (LitData would resume the
    finished epoch, as an empty one). Workers are not persistent: each epoch's must learn the epoch number, and
    an epoch of data that needs streaming is long.
    """

    def __init__(self, location: str, transform: Callable, global_batch_size: int, num_workers: int,
                 collate_fn: Callable | None, seed: int, max_cache_size: str) -> None:
        L.LightningDataModule.__init__(self)
        self.location, self.transform, self.max_cache_size = location, transform, max_cache_size
        self.global_batch_size, self.num_workers, self.collate_fn, self.seed = (
            global_batch_size, num_workers, collate_fn, seed)
        self.loader: PositionedLoader | None = None
        self.position: dict | None = None
        # Lightning warns at a mid-epoch resume that a loader without a state restarts its epoch; this one
        # continues it (the datamodule's state).
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")

    def train_dataloader(self) -> PositionedLoader:
        views = StreamedViews(self.location, self.transform, self.seed, self.max_cache_size)
        self.loader = PositionedLoader(views, batch_size=self._per_device_batch(), num_workers=self.num_workers,
                                       collate_fn=self.collate_fn, drop_last=True,
                                       pin_memory=torch.cuda.is_available())
        self._restore()
        return self.loader

    def state_dict(self) -> dict:
        if self.loader is None:
            return {}
        trainer = self.trainer
        if trainer.fit_loop.epoch_loop.batch_progress.current.ready >= trainer.num_training_batches:
            return {"finished_epoch": self.loader.current_epoch}
        return {"loader": StreamingDataLoader.state_dict(self.loader)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.position = state_dict or None
        self._restore()

    def _restore(self) -> None:
        if self.loader is None or self.position is None:
            return
        if "loader" in self.position:
            StreamingDataLoader.load_state_dict(self.loader, self.position["loader"])
        else:
            self.loader.current_epoch = self.position["finished_epoch"]  # its next iteration starts the next
        self.position = None


def stream_pretrain_datamodule(cfg: DictConfig, spec: StageSpec, train) -> StreamDataModule:
    """Two augmented views of every streamed training image (the cache path's transforms: the shards hold the
    same resized pixels, JPEG-compressed unless dataset.stream.storage=raw)."""
    views = view_specs(cfg.augmentation)
    location = build_shards(train, "train", views_short_side(spec.cfg.resolution, views), cfg.dataset.stream)
    transform, collate = pretrain_transform(spec.cfg.resolution, views, True, cfg.dataset.augment_on)
    return StreamDataModule(location, transform, spec.cfg.batch_size, cfg.dataset.num_workers, collate,
                            stage_seed(cfg.seed, spec.name), str(cfg.dataset.stream.max_cache_size))


def streamed_splits(cfg: DictConfig, spec: StageSpec, train, test) -> tuple[ShardImages, ShardImages]:
    """The train and test splits read whole from their shards (the kNN monitor's data)."""
    side, stream = views_short_side(spec.cfg.resolution, view_specs(cfg.augmentation)), cfg.dataset.stream
    return tuple(ShardImages(build_shards(split, name, side, stream), str(stream.max_cache_size))
                 for split, name in ((train, "train"), (test, "test")))
