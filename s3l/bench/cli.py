"""`python -m s3l.bench`: arguments, the resized caches, the machine, and the run of every section."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import shutil
import time
from pathlib import Path

import lightning as L
import torch
import torchvision

from s3l.bench.data import PIPELINES, bench_data, folder_megabytes
from s3l.bench.endtoend import bench_endtoend
from s3l.bench.profile import bench_profile
from s3l.bench.report import markdown
from s3l.bench.training import CONFIGS, bench_epoch, bench_train, pretrain_config
from s3l.config import check_group_options
from s3l.data.cache import CachedImages, build_resized_cache, views_short_side
from s3l.data.datasets import CUB200
from s3l.data.views import ViewSpec, view_specs

SECTIONS = ("data", "profile", "train", "epoch", "e2e", "stream")
# glibc reads these when a process starts. By default it serves large blocks (>= 128 KiB, raised
# dynamically up to 32 MiB) with fresh mmaps and returns freed heap tops to the OS, so a CPU training step
# can page-fault its activations in anew each time, by an amount that depends on the process's allocation
# history. Fixed thresholds keep those buffers in the heap. On a 2-core machine this took resnet50 at
# 112 px from 4.8-5.2 s to 4.5-4.7 s per step, plain loop and project alike (docs/benchmarks.md).
STEADY_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(16 * 2**30)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    import s3l.bench

    parser = argparse.ArgumentParser(prog="python -m s3l.bench", description=s3l.bench.__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default="resnet18", help="comma-separated architectures")
    parser.add_argument("--resolutions", default="56,112",
                        help="comma-separated pretraining resolutions (224 is slow on a CPU)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--steps", type=int, default=8, help="batches per timed window")
    parser.add_argument("--warmup", type=int, default=5, help="batches before the first window")
    parser.add_argument("--windows", type=int, default=3, help="timed windows (the median is reported)")
    parser.add_argument("--methods", default="mocov2",
                        help="comma-separated SSL methods for the train section (the plain loop is MoCo v2's)")
    parser.add_argument("--augmentation", default="mocov2",
                        help="the views, an option of the augmentation config group (configs/augmentation/)")
    parser.add_argument("--root", default="../shared/datasets/cub_200_2011_10cls/CUB_200_2011",
                        help="CUB-200-2011 folder (official layout or train/ + val/)")
    parser.add_argument("--out", type=Path, default=Path("bench_results"))
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed", "16-mixed"])
    parser.add_argument("--channels-last", action="store_true", help="channels_last model weights (both loops)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoders (both loops)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help="comma-separated: data,profile,train,epoch,e2e")
    parser.add_argument("--e2e-epochs", type=int, default=20,
                        help="e2e section: epochs of each whole run (first architecture and resolution)")
    parser.add_argument("--e2e-knn-every", type=int, default=10,
                        help="e2e section: the kNN monitor every N epochs, in both runs (the project's default)")
    parser.add_argument("--profile-images", type=int, default=96, help="images per pass in the profile section")
    parser.add_argument("--pipelines", default=",".join(PIPELINES),
                        help="comma-separated data pipelines: original,cache,fast,device (original is always run)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="train section: run each training job this many times, in alternating order")
    parser.add_argument("--steady-malloc", action="store_true",
                        help="fix glibc malloc's mmap and trim thresholds in the training processes (see "
                        "STEADY_MALLOC): on CPUs, page faults on fresh activation buffers otherwise vary with "
                        "each process's allocation history by several percent")
    parser.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=True,
                        help="each training run in a fresh process (own peak memory); --no-isolate: all in "
                        "this one, faster to start, but then CPU peak memory is the largest so far")
    args = parser.parse_args(argv)
    args.archs = args.archs.split(",")
    args.methods = args.methods.split(",")
    args.resolutions = [int(r) for r in args.resolutions.split(",")]
    args.sections = args.sections.split(",")
    chosen = args.pipelines.split(",")
    args.pipelines = [name for name in PIPELINES if name == "original" or name in chosen]
    for given, valid, what in ((args.sections, SECTIONS, "section"), (chosen, PIPELINES, "pipeline")):
        unknown = set(given) - set(valid)
        if unknown:
            parser.error(f"unknown {what}(s) {', '.join(sorted(unknown))}: choose from {', '.join(valid)}")
    problem = check_group_options([f"architecture={arch}" for arch in args.archs]
                                  + [f"method={method}" for method in args.methods]
                                  + [f"augmentation={args.augmentation}"], CONFIGS)
    if problem:
        parser.error(problem)
    if args.steady_malloc and not args.isolate:
        parser.error("--steady-malloc applies to fresh processes: drop --no-isolate")
    if min(args.steps, args.warmup, args.windows, args.batch, args.repeats, args.profile_images, args.e2e_epochs) < 1:
        parser.error("--steps, --warmup, --windows, --batch, --repeats, --profile-images and --e2e-epochs must be "
                     "at least 1")
    return args


def machine() -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    cuda = torch.cuda.is_available()
    return {"cpu": cpu, "cores": os.cpu_count(), "device": torch.cuda.get_device_name(0) if cuda else "cpu",
            "torch": torch.__version__, "torchvision": torchvision.__version__, "lightning": L.__version__,
            "python": platform.python_version(), "intra_op_threads": torch.get_num_threads(),
            "load_average": os.getloadavg()}


def build_caches(args: argparse.Namespace, views: tuple[ViewSpec, ViewSpec],
                 scratch: Path) -> tuple[dict, list[dict]]:
    """The train split read from files, and its resized cache for each resolution (build time measured)."""
    original = CUB200(args.root, "train")
    datasets: dict = {"original": original}
    builds = []
    for resolution in args.resolutions:
        side = views_short_side(resolution, views)
        start = time.perf_counter()
        folder = build_resized_cache(original, side, scratch / "cache")
        builds.append({"resolution": resolution, "short_side": side, "build_s": time.perf_counter() - start,
                       "megabytes": folder_megabytes(folder)})
        datasets[resolution] = CachedImages(folder)
    return datasets, builds


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.steady_malloc:
        os.environ.update(STEADY_MALLOC)  # inherited by the training processes `isolated` spawns
    args.out.mkdir(parents=True, exist_ok=True)
    scratch = args.out / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    results: dict = {"machine": machine(), "settings": {k: str(v) if isinstance(v, Path) else v
                                                        for k, v in vars(args).items()}}
    cfg, _ = pretrain_config(args.archs[0], args.resolutions[0], args, scratch, None)
    views = view_specs(cfg.augmentation)
    datasets, results["cache"] = build_caches(args, views, scratch)
    if "data" in args.sections:
        results["data"] = bench_data(args, datasets, views)
    if "profile" in args.sections:
        results["profile"] = bench_profile(args, datasets, views)
    if "train" in args.sections:
        results["train"] = bench_train(args, datasets, scratch)
    if "epoch" in args.sections:
        results["epoch"] = bench_epoch(args, datasets, scratch)
    if "e2e" in args.sections:
        results["e2e"] = bench_endtoend(args, len(datasets["original"]), scratch)
    if "stream" in args.sections:
        if importlib.util.find_spec("litdata") is None:
            print("stream: skipped (LitData is not installed: pip install -e '.[stream]')", flush=True)
        else:
            from s3l.bench.stream import bench_stream  # LitData only where it is used (an extra)

            results["stream"] = bench_stream(args, datasets["original"], views, scratch)
    results["machine"]["load_average_end"] = os.getloadavg()
    shutil.rmtree(scratch, ignore_errors=True)
    (args.out / "bench.json").write_text(json.dumps(results, indent=2))
    report = markdown(results)
    (args.out / "bench.md").write_text(report)
    print(report)
    return results
