"""The stream section: LitData shards (dataset.format=litdata) against the memory-mapped cache and the files.

For each resolution and storage (JPEG at quality 95, raw pixels): the shard build of the train split (images/s
and size on disk, beside the cache's build in the same run) and the streamed read, as ready two-view batches on
the device (the cache path's views, `fast`), over epochs back to back: the rate within an epoch (median over the
epochs after the first) and the seconds each epoch takes to its first batch (its workers start anew, as in training). `data` in the same run gives the cache's and the
original JPEG pipeline's read rates on the same images.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from s3l.bench.data import bench_device, folder_megabytes, synchronize, to_device, window_marks
from s3l.data.cache import views_short_side
from s3l.data.datamodule import pretrain_transform
from s3l.data.stream import STORAGES, PositionedLoader, StreamedViews, build_shards
from s3l.data.views import ViewSpec

QUALITY = 95  # configs/dataset_base/files.yaml's dataset.stream.quality


def streamed_epochs(args: argparse.Namespace, location: str, resolution: int,
                    views: tuple[ViewSpec, ViewSpec]) -> list[dict]:
    """Whole epochs of the streamed loader until `warmup + windows x steps` batches: per epoch, the seconds
    from asking for its iterator to its first batch on the device (workers started, first chunk opened), and
    its rate from the first batch to the last (what a long epoch, e.g. ImageNet's, runs at)."""
    transform, collate = pretrain_transform(resolution, views, fast=True)
    loader = PositionedLoader(StreamedViews(location, transform, seed=0, max_cache_size="10GB"),
                              batch_size=args.batch, num_workers=args.workers, collate_fn=collate, drop_last=True)
    device, epochs, total = bench_device(), [], window_marks(args)[-1]
    while sum(e["batches"] for e in epochs) < total:
        asked, stamps = time.perf_counter(), []
        for batch in loader:
            to_device(batch, device)
            synchronize(device)
            stamps.append(time.perf_counter())
        epochs.append({"batches": len(stamps), "start_s": stamps[0] - asked,
                       "images_per_s": (len(stamps) - 1) * args.batch / (stamps[-1] - stamps[0])})
    return epochs


def bench_stream(args: argparse.Namespace, original, views: tuple[ViewSpec, ViewSpec], scratch: Path) -> list[dict]:
    rows = []
    for resolution in args.resolutions:
        side = views_short_side(resolution, views)
        for storage in STORAGES:
            stream = {"dir": str(scratch / "shards"), "storage": storage, "quality": QUALITY,
                      "build_workers": max(1, args.workers), "chunk_bytes": "64MB", "max_cache_size": "10GB"}
            start = time.perf_counter()
            location = build_shards(original, "train", side, stream)
            build_s = time.perf_counter() - start
            epochs = streamed_epochs(args, location, resolution, views)
            rates = [e["images_per_s"] for e in epochs[1:]] or [epochs[0]["images_per_s"]]  # the first warms up
            rows.append({"resolution": resolution, "storage": storage, "short_side": side, "build_s": build_s,
                         "build_images_per_s": len(original) / build_s, "megabytes": folder_megabytes(Path(location)),
                         "build_workers": stream["build_workers"], "images_per_s": statistics.median(rates),
                         "epoch_images_per_s": rates,
                         "epoch_start_s": statistics.median(e["start_s"] for e in epochs)})
            print(f"stream {resolution:>4} px {storage:>4}: built {rows[-1]['build_images_per_s']:7.0f} img/s, "
                  f"{rows[-1]['megabytes']:6.1f} MB; read {rows[-1]['images_per_s']:8.1f} img/s within epochs, "
                  f"{rows[-1]['epoch_start_s']:.2f} s to each epoch's first batch", flush=True)
    return rows
