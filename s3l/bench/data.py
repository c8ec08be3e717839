"""The benchmark's data pipelines, their DataLoaders, timing windows, and the data section."""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, default_collate

from s3l.data.datamodule import Transformed, pretrain_transform
from s3l.data.device_augment import RawViews, realize_views
from s3l.data.resident import ResidentImages, ResidentLoader, TwoViews
from s3l.data.sampling import EpochSampler
from s3l.data.views import ViewSpec

PIPELINES = ("original", "cache", "fast", "device")


def pipeline(name: str, datasets: dict, resolution: int, views: tuple[ViewSpec, ViewSpec]) -> tuple:
    """(dataset, two-view transform, collate function) of one data pipeline at `resolution`, as the
    project's datamodule builds them (`pretrain_transform`). `resident` (not a choice of `--pipelines`):
    the images that `datasets[("resident", resolution)]` holds on the device, and the views made there."""
    if name == "resident":
        return datasets[("resident", resolution)], TwoViews(views, resolution), None
    dataset = datasets["original"] if name == "original" else datasets[resolution]
    augment_on = "device" if name == "device" else "workers"
    transform, collate = pretrain_transform(resolution, views, fast=name == "fast", augment_on=augment_on)
    return dataset, transform, collate or default_collate


def make_loader(dataset: Dataset | ResidentImages, transform, collate, batch: int, workers: int,
                batches: int | None) -> DataLoader | ResidentLoader:
    """The project's DataLoader settings; `batches` shuffled batches (repeating the data), or one epoch.
    Resident images get the resident path's loader instead (batches made on their device, no workers)."""
    if isinstance(dataset, ResidentImages):
        keys = EpochSampler(dataset, seed=0) if batches is None else [
            (0, int(index)) for index in RandomSampler(dataset, num_samples=batches * batch)]
        return ResidentLoader(dataset, transform, batch, keys, drop_last=True, seed=0)
    sampler = RandomSampler(dataset, num_samples=None if batches is None else batches * batch)
    return DataLoader(Transformed(dataset, transform), batch_size=batch, sampler=sampler, drop_last=True,
                      num_workers=workers, pin_memory=torch.cuda.is_available(), collate_fn=collate)


def folder_megabytes(folder: Path) -> float:
    """The size of a store of images (the cache, a shard folder)."""
    return sum(f.stat().st_size for f in folder.iterdir()) / 2**20


def bench_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_device(batch, device: torch.device):
    """A loader batch on `device`, augmented there when it is a `RawViews` (what Lightning's hooks do)."""
    if isinstance(batch, RawViews):
        images, params = (t.to(device, non_blocking=True) for t in (batch.images, batch.params))
        return realize_views(RawViews(images, params, batch.labels, batch.size))
    (im_q, im_k), labels = batch
    return [im_q.to(device, non_blocking=True), im_k.to(device, non_blocking=True)], labels


def window_marks(args: argparse.Namespace) -> list[int]:
    """Batch counts after which a timestamp is taken: end of warm-up, then the end of each window."""
    return [args.warmup + k * args.steps for k in range(args.windows + 1)]


def window_rates(times: list[float], steps: int, batch: int) -> list[float]:
    """Images/s of each window between consecutive timestamps."""
    return [steps * batch / (end - start) for start, end in zip(times, times[1:])]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_data(args: argparse.Namespace, datasets: dict, views: tuple[ViewSpec, ViewSpec]) -> list[dict]:
    """Ready two-view batches per second on the device from each pipeline's DataLoader, no model."""
    rows = []
    marks = window_marks(args)
    device = bench_device()
    for resolution in args.resolutions:
        for name in args.pipelines:
            dataset, transform, collate = pipeline(name, datasets, resolution, views)
            loader = make_loader(dataset, transform, collate, args.batch, args.workers, marks[-1])
            times = []
            for count, batch in enumerate(loader, start=1):
                to_device(batch, device)
                if count in marks:
                    synchronize(device)
                    times.append(time.perf_counter())
            rates = window_rates(times, args.steps, args.batch)
            rows.append({"resolution": resolution, "pipeline": name, "images_per_s": statistics.median(rates),
                         "window_images_per_s": rates})
            print(f"data {resolution:>4} px {name:>8}: {rows[-1]['images_per_s']:8.1f} img/s", flush=True)
    return rows
