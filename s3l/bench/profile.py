"""The profile section: where a data pipeline's time goes per image, step by step, on one CPU thread.

Each pipeline runs in this process, without DataLoader workers, over the first `--profile-images` train
images (best of 3 passes, so file-cache and allocator warm-up do not count): reading (and decoding) an
image, each augmentation step of both views, and batching (`--batch` images per batch). For `device`, the
batched steps of `s3l.data.device_augment` run on the CPU here: on a GPU they are a few kernels per batch.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from torchvision import transforms

from s3l.bench.data import pipeline
from s3l.data.device_augment import PARAMS, RawViews, augment_steps, normalize
from s3l.data.views import ViewSpec

# The steps of a view's Compose, named by the transform (or the one inside a RandomApply), grouped as
# `s3l.data.device_augment.augment_steps` groups them.
LAST_OPS = "grayscale + blur + solarize + flip"
STEPS = {
    "RandomResizedCrop": "crop + resize", "ColorJitter": "colour jitter", "FastColorJitter": "colour jitter",
    "RandomGrayscale": LAST_OPS, "PILGaussianBlur": LAST_OPS, "RandomSolarize": LAST_OPS,
    "RandomHorizontalFlip": LAST_OPS, "ToTensor": "to tensor + normalise",
    "Normalize": "to tensor + normalise", "PILToTensor": "to tensor + normalise",
}
ORDER = ("read + decode", "draw parameters", "crop + resize", "colour jitter", LAST_OPS,
         "to tensor + normalise", "collate")


def step_name(transform) -> str:
    inner = transform.transforms[0] if isinstance(transform, transforms.RandomApply) else transform
    return STEPS[type(inner).__name__]


def one_pass(name: str, dataset, transform, collate, images: int, batch: int) -> dict[str, float]:
    """Seconds spent in each step over `images` images."""
    spent: dict[str, float] = defaultdict(float)

    def timed(step: str, fn, *args):
        start = time.perf_counter()
        result = fn(*args)
        spent[step] += time.perf_counter() - start
        return result

    samples = []
    for index in range(images):
        image, label = timed("read + decode", dataset.__getitem__, index)
        if name == "device":
            samples.append((timed("draw parameters", transform, image), label))
            continue
        views = []
        for view_transform in transform.transforms:  # a MultiViewTransform: one Compose per view
            view = image
            for step in view_transform.transforms:
                view = timed(step_name(step), step, view)
            views.append(view)
        samples.append((views, label))
    for start in range(0, images, batch):
        collated = timed("collate", collate, samples[start : start + batch])
        if isinstance(collated, RawViews):
            augment_batch(collated, spent)
    return spent


def augment_batch(batch: RawViews, spent: dict[str, float]) -> None:
    """What `realize_views` does on the device, step by step."""
    params = batch.params.reshape(-1, PARAMS)
    start = time.perf_counter()
    for step, views in augment_steps(batch.images, params, batch.size, views_per_image=2):
        now = time.perf_counter()
        spent[step] += now - start
        start = now
        last = views
    normalize(last)
    spent["to tensor + normalise"] += time.perf_counter() - start


def bench_profile(args: argparse.Namespace, datasets: dict, views: tuple[ViewSpec, ViewSpec]) -> list[dict]:
    """Milliseconds per image (two views) in each step of each pipeline, on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        for resolution in args.resolutions:
            for name in args.pipelines:
                dataset, transform, collate = pipeline(name, datasets, resolution, views)
                images = min(args.profile_images, len(dataset))
                passes = [one_pass(name, dataset, transform, collate, images, args.batch) for _ in range(3)]
                best = min(passes, key=lambda spent: sum(spent.values()))
                steps = {step: best[step] / images * 1e3 for step in ORDER if step in best}
                rows.append({"resolution": resolution, "pipeline": name, "ms_per_image": steps,
                             "total_ms_per_image": sum(steps.values())})
                print(f"profile {resolution:>4} px {name:>8}: {rows[-1]['total_ms_per_image']:6.2f} ms/image",
                      flush=True)
    finally:
        torch.set_num_threads(threads)
    return rows
