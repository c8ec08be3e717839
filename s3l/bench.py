"""Pretraining throughput: this project (Lightning) against a plain PyTorch loop, and the upstream data
pipeline against the fast cached one.

    python -m s3l.bench --archs resnet18,resnet50 --resolutions 56,112 --batch 32 --workers 2

Sections (`--sections`):
- data: images/s that a DataLoader alone delivers as ready batches (no model) with three pipelines:
  `original` (full JPEG decode + upstream MoCo v2 augmentation), `cache` (the resized-image cache, same
  augmentation) and `fast` (the cache + `fast_moco_v2_augmentation` + `collate_normalized`).
- train: MoCo v2 pretraining images/s of the project's MoCoV2 under the project's Trainer (built by
  `s3l.stages.build`), against a plain loop (upstream `main_moco_pretraining.py` style: SGD,
  `loss.backward()`, `optimizer.step()`, no Lightning) over the same model, optimizer, batch and DataLoader;
  the project is also run with the fast data path. Each run is a fresh process (unless --no-isolate), so
  peak memory (RSS on CPU, CUDA max allocated on GPU) is its own.
- epoch: one epoch of the train split end to end: plain loop + original pipeline against project + fast.

An image is one dataset image delivered as two augmented views (query and key). Rates are the median over
`--windows` windows of `--steps` batches, after `--warmup` batches (at least the 2 x workers batches that
the DataLoader prefetches, or the first windows look faster than the steady state). Timed runs draw
`warmup + windows x steps` shuffled batches from the train split, repeating it as needed.
Writes `<out>/bench.json` and `<out>/bench.md` and prints the tables.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
import torchvision
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict
from torch.utils.data import DataLoader, Dataset, RandomSampler, default_collate

from s3l.callbacks.cost import peak_memory_mb
from s3l.config import StageSpec, check_group_options, register_resolvers, stage_specs
from s3l.data.cache import (
    CachedImages,
    build_resized_cache,
    cache_short_side,
    collate_normalized,
    fast_moco_v2_augmentation,
)
from s3l.data.datamodule import Transformed
from s3l.data.datasets import build_dataset
from s3l.data.transforms import TwoCropsTransform, moco_v2_augmentation
from s3l.errors import S3LError
from s3l.methods.mocov2 import MoCoV2, infonce_logits
from s3l.optim import build_sgd
from s3l.stages.build import build_cost_meter, build_module, build_trainer
from s3l.validate import validate_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PIPELINES = ("original", "cache", "fast")
SECTIONS = ("data", "train", "epoch")
CUB_TRAIN_IMAGES = 5994  # the full CUB-200-2011 train split, for extrapolated epoch times


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m s3l.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default="resnet18", help="comma-separated architectures")
    parser.add_argument("--resolutions", default="56,112",
                        help="comma-separated pretraining resolutions (224 is slow on a CPU)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--steps", type=int, default=8, help="batches per timed window")
    parser.add_argument("--warmup", type=int, default=5, help="batches before the first window")
    parser.add_argument("--windows", type=int, default=3, help="timed windows (the median is reported)")
    parser.add_argument("--root", default="../shared/datasets/cub_200_2011_10cls/CUB_200_2011",
                        help="CUB-200-2011 folder (official layout or train/ + val/)")
    parser.add_argument("--out", type=Path, default=Path("bench_results"))
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed", "16-mixed"])
    parser.add_argument("--channels-last", action="store_true", help="channels_last model weights (both loops)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoders (both loops)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated: data,train,epoch")
    parser.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=True,
                        help="each training run in a fresh process (own peak memory); --no-isolate: all in "
                        "this one, faster to start, but then CPU peak memory is the largest so far")
    args = parser.parse_args(argv)
    args.archs = args.archs.split(",")
    args.resolutions = [int(r) for r in args.resolutions.split(",")]
    args.sections = args.sections.split(",")
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}: choose from {', '.join(SECTIONS)}")
    problem = check_group_options([f"architecture={arch}" for arch in args.archs], CONFIGS)
    if problem:
        parser.error(problem)
    if min(args.steps, args.warmup, args.windows, args.batch) < 1:
        parser.error("--steps, --warmup, --windows and --batch must be at least 1")
    return args


def pretrain_config(arch: str, resolution: int, args: argparse.Namespace, run_dir: Path,
                    limit_batches: int | None) -> tuple[DictConfig, StageSpec]:
    """The project's config of a MoCo v2 pretraining stage on CUB, as `train.py` would compose it."""
    register_resolvers()
    overrides = [
        "experiment=s3l", "chain=pretrain_finetune", "dataset=cub200", f"dataset.root={args.root}",
        f"architecture={arch}", f"stages.pretrain.resolution={resolution}", f"method.batch_size={args.batch}",
        f"dataset.num_workers={args.workers}", f"trainer.precision={args.precision}", "trainer.max_epochs=1",
        f"trainer.limit_train_batches={'null' if limit_batches is None else limit_batches}",
        "callbacks.progress_bar=none", "logger=csv",
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
    specs = stage_specs(cfg)
    validate_config(cfg, specs)
    return cfg, next(spec for spec in specs if spec.cfg.kind == "pretrain")


def pipeline(name: str, datasets: dict, resolution: int, augmentation: DictConfig) -> tuple:
    """(dataset, two-view transform, collate function) of one data pipeline at `resolution`."""
    sigma = tuple(augmentation.blur_sigma)
    if name == "fast":
        views = fast_moco_v2_augmentation(resolution, augmentation.min_scale, sigma)
        return datasets[resolution], TwoCropsTransform(views), collate_normalized
    dataset = datasets["original"] if name == "original" else datasets[resolution]
    views = moco_v2_augmentation(resolution, augmentation.min_scale, sigma)
    return dataset, TwoCropsTransform(views), default_collate


def make_loader(dataset: Dataset, transform, collate, batch: int, workers: int, batches: int | None) -> DataLoader:
    """The project's DataLoader settings; `batches` shuffled batches (repeating the data), or one epoch."""
    sampler = RandomSampler(dataset, num_samples=None if batches is None else batches * batch)
    return DataLoader(Transformed(dataset, transform), batch_size=batch, sampler=sampler, drop_last=True,
                      num_workers=workers, pin_memory=torch.cuda.is_available(), collate_fn=collate)


def window_marks(args: argparse.Namespace) -> list[int]:
    """Batch counts after which a timestamp is taken: end of warm-up, then the end of each window."""
    return [args.warmup + k * args.steps for k in range(args.windows + 1)]


def window_rates(times: list[float], steps: int, batch: int) -> list[float]:
    """Images/s of each window between consecutive timestamps."""
    return [steps * batch / (end - start) for start, end in zip(times, times[1:])]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class WindowTimer(L.Callback):
    """Timestamps after the batches in `marks` (counted from 1), and the span of the first epoch."""

    def __init__(self, marks: list[int]) -> None:
        self.marks = set(marks)
        self.times: list[float] = []
        self.epoch_start = self.epoch_end = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx + 1 in self.marks:
            synchronize(pl_module.device)
            self.times.append(time.perf_counter())

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        synchronize(pl_module.device)
        self.epoch_end = time.perf_counter()


def bench_data(args: argparse.Namespace, datasets: dict, augmentation: DictConfig) -> list[dict]:
    """Ready two-view batches per second from each pipeline's DataLoader, no model."""
    rows = []
    marks = window_marks(args)
    for resolution in args.resolutions:
        for name in PIPELINES:
            dataset, transform, collate = pipeline(name, datasets, resolution, augmentation)
            loader = make_loader(dataset, transform, collate, args.batch, args.workers, marks[-1])
            times = []
            for count, _ in enumerate(loader, start=1):
                if count in marks:
                    times.append(time.perf_counter())
            rates = window_rates(times, args.steps, args.batch)
            rows.append({"resolution": resolution, "pipeline": name, "images_per_s": statistics.median(rates),
                         "window_images_per_s": rates})
            print(f"data {resolution:>4} px {name:>8}: {rows[-1]['images_per_s']:8.1f} img/s", flush=True)
    return rows


def prepare_model(module: MoCoV2, args: argparse.Namespace) -> MoCoV2:
    """The options both loops share: channels_last weights, compiled encoders."""
    if args.channels_last:
        module = module.to(memory_format=torch.channels_last)
    if args.compile:
        module.encoder_q.compile()
        module.encoder_k.compile()
    return module


def lightning_run(job: dict) -> dict:
    """The project: MoCoV2 and Trainer from `s3l.stages.build`, fed by the given pipeline."""
    args, run_dir = job["args"], Path(job["run_dir"])
    marks = window_marks(args) if job["batches"] else []
    cfg, spec = pretrain_config(job["arch"], job["resolution"], args, run_dir, job["batches"])
    module = prepare_model(build_module(cfg, spec, len(job["datasets"]["original"].classes), world_size=1), args)
    timer = WindowTimer(marks)
    trainer = build_trainer(cfg, spec, run_dir, [build_cost_meter(spec, cfg.architecture.stem), timer], None)
    loader = make_loader(*pipeline(job["data"], job["datasets"], job["resolution"], cfg.method.augmentation),
                         args.batch, args.workers, job["batches"])
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    fit_s = time.perf_counter() - start
    return {"times": timer.times, "epoch_s": timer.epoch_end - timer.epoch_start, "fit_s": fit_s,
            "steps": trainer.global_step, "peak_memory_mb": peak_memory_mb()}


def plain_step(module: MoCoV2, optimizer: torch.optim.Optimizer, batch, device: torch.device, autocast,
               scaler) -> float:
    """One step the way upstream main_moco_pretraining.py takes it, on the same MoCoV2 object."""
    (im_q, im_k), _ = batch
    im_q, im_k = im_q.to(device, non_blocking=True), im_k.to(device, non_blocking=True)
    with autocast():
        q = F.normalize(module.encoder_q(im_q), dim=1)
        module.momentum_update_key_encoder()
        k = module.compute_keys(im_k)
        logits = infonce_logits(q, k, module.queue.clone().detach(), module.hparams.T)
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=device)
        loss = F.cross_entropy(logits, labels)
    module.dequeue_and_enqueue(k)
    optimizer.zero_grad()
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    (logits.argmax(dim=1) == 0).float().mean().item()  # upstream's per-step accuracy meter
    return loss.item()  # upstream's per-step loss meter


def plain_run(job: dict) -> dict:
    """The plain loop: same model, optimizer settings, batch and DataLoader; no Lightning."""
    args, run_dir = job["args"], Path(job["run_dir"])
    marks = set(window_marks(args)) if job["batches"] else set()
    cfg, spec = pretrain_config(job["arch"], job["resolution"], args, run_dir, job["batches"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module = build_module(cfg, spec, len(job["datasets"]["original"].classes), world_size=1).to(device).train()
    module = prepare_model(module, args)
    s = spec.cfg
    optimizer = build_sgd(module.encoder_q.parameters(), s.lr, s.momentum, s.weight_decay)
    autocast, scaler = mixed_precision(args.precision, device)
    loader = make_loader(*pipeline(job["data"], job["datasets"], job["resolution"], cfg.method.augmentation),
                         args.batch, args.workers, job["batches"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, steps = [], 0
    start = time.perf_counter()
    for steps, batch in enumerate(loader, start=1):
        plain_step(module, optimizer, batch, device, autocast, scaler)
        if steps in marks:
            synchronize(device)
            times.append(time.perf_counter())
    synchronize(device)
    epoch_s = time.perf_counter() - start
    return {"times": times, "epoch_s": epoch_s, "fit_s": epoch_s, "steps": steps,
            "peak_memory_mb": peak_memory_mb()}


def mixed_precision(precision: str, device: torch.device) -> tuple:
    """(autocast context factory, GradScaler or None) matching Lightning's precision setting."""
    if precision == "32-true":
        return contextlib.nullcontext, None
    dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float16
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler


def run_job(job: dict) -> dict:
    """One training run in this process (the entry point of the fresh process `isolated` starts)."""
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    # A spawned process inherits "spawn"; DataLoader workers should start as they do under train.py.
    multiprocessing.set_start_method(multiprocessing.get_all_start_methods()[0], force=True)
    L.seed_everything(0, verbose=False)
    return (plain_run if job["runner"] == "plain" else lightning_run)(job)


def isolated(job: dict) -> dict:
    """`run_job` in a fresh process (its peak memory and warm-up are its own), or here with --no-isolate."""
    if not job["args"].isolate:
        return run_job(job)
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(run_job, job).result()


TRAIN_RUNS = (("plain", "original"), ("lightning", "original"), ("lightning", "fast"))


def bench_train(args: argparse.Namespace, datasets: dict, scratch: Path) -> list[dict]:
    """Steady-state pretraining images/s of the plain loop and the project, in fresh processes."""
    rows = []
    batches = window_marks(args)[-1]
    for arch in args.archs:
        for resolution in args.resolutions:
            for runner, data in TRAIN_RUNS:
                job = {"args": args, "arch": arch, "resolution": resolution, "runner": runner, "data": data,
                       "datasets": datasets, "batches": batches, "run_dir": str(scratch / f"{arch}_{resolution}_{runner}_{data}")}
                result = isolated(job)
                rates = window_rates(result["times"], args.steps, args.batch)
                rows.append({"arch": arch, "resolution": resolution, "runner": runner, "data": data,
                             "images_per_s": statistics.median(rates), "window_images_per_s": rates,
                             "peak_memory_mb": result["peak_memory_mb"]})
                print(f"train {arch} {resolution:>4} px {runner:>9} + {data:>8} data: "
                      f"{rows[-1]['images_per_s']:7.1f} img/s, peak {result['peak_memory_mb']:.0f} MB", flush=True)
    return rows


def bench_epoch(args: argparse.Namespace, datasets: dict, scratch: Path) -> list[dict]:
    """One epoch of the train split: the plain loop with the original pipeline, the project with the fast one."""
    rows = []
    arch = args.archs[0]
    for resolution in args.resolutions:
        for runner, data in (("plain", "original"), ("lightning", "fast")):
            job = {"args": args, "arch": arch, "resolution": resolution, "runner": runner, "data": data,
                   "datasets": datasets, "batches": None, "run_dir": str(scratch / f"epoch_{arch}_{resolution}_{runner}_{data}")}
            result = isolated(job)
            images = result["steps"] * args.batch
            rows.append({"arch": arch, "resolution": resolution, "runner": runner, "data": data,
                         "images": images, "epoch_s": result["epoch_s"], "fit_s": result["fit_s"],
                         "full_cub_epoch_s": result["epoch_s"] * CUB_TRAIN_IMAGES / images})
            print(f"epoch {arch} {resolution:>4} px {runner:>9} + {data:>8} data: {result['epoch_s']:6.1f} s "
                  f"({images} images)", flush=True)
    return rows


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


def build_caches(args: argparse.Namespace, augmentation: DictConfig, scratch: Path) -> tuple[dict, list[dict]]:
    """The train split read from files, and its resized cache for each resolution (build time measured)."""
    original = build_dataset("cub200", args.root, "train", "skip")
    datasets: dict = {"original": original}
    builds = []
    for resolution in args.resolutions:
        side = cache_short_side(resolution, augmentation.min_scale)
        start = time.perf_counter()
        folder = build_resized_cache(original, side, scratch / "cache")
        builds.append({"resolution": resolution, "short_side": side, "build_s": time.perf_counter() - start,
                       "megabytes": sum(f.stat().st_size for f in folder.iterdir()) / 2**20})
        datasets[resolution] = CachedImages(folder)
    return datasets, builds


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    scratch = args.out / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    results: dict = {"machine": machine(), "settings": {k: str(v) if isinstance(v, Path) else v
                                                        for k, v in vars(args).items()}}
    cfg, _ = pretrain_config(args.archs[0], args.resolutions[0], args, scratch, None)
    datasets, results["cache"] = build_caches(args, cfg.method.augmentation, scratch)
    if "data" in args.sections:
        results["data"] = bench_data(args, datasets, cfg.method.augmentation)
    if "train" in args.sections:
        results["train"] = bench_train(args, datasets, scratch)
    if "epoch" in args.sections:
        results["epoch"] = bench_epoch(args, datasets, scratch)
    results["machine"]["load_average_end"] = os.getloadavg()
    shutil.rmtree(scratch, ignore_errors=True)
    (args.out / "bench.json").write_text(json.dumps(results, indent=2))
    report = markdown(results)
    (args.out / "bench.md").write_text(report)
    print(report)
    return results


def markdown(results: dict) -> str:
    """bench.md: the machine, then one table per section that ran."""
    m, s = results["machine"], results["settings"]
    lines = [
        "# S3L pretraining benchmark", "",
        f"- machine: {m['cpu']}, {m['cores']} cores, device {m['device']}; torch {m['torch']}, "
        f"torchvision {m['torchvision']}, lightning {m['lightning']}, Python {m['python']}; "
        f"{m['intra_op_threads']} intra-op threads per training process",
        f"- load average (1, 5, 15 min) at start {fmt_load(m['load_average'])}, "
        f"at end {fmt_load(m['load_average_end'])}",
        f"- batch {s['batch']}, {s['workers']} workers, precision {s['precision']}, channels_last "
        f"{s['channels_last']}, compile {s['compile']}; median of {s['windows']} windows of {s['steps']} "
        f"batches after {s['warmup']} warm-up batches; 1 image = 2 views",
        "", "## Resized-image cache (built once per resolution)", "",
        "| resolution | cached short side | build s | size MB |", "|---:|---:|---:|---:|",
    ]
    lines += [f"| {c['resolution']} | {c['short_side']} | {c['build_s']:.1f} | {c['megabytes']:.0f} |"
              for c in results["cache"]]
    if "data" in results:
        lines += ["", "## Data loading alone (images/s, no model)", "",
                  "| resolution | original | cache | fast | cache / original | fast / original |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for resolution in s["resolutions"]:
            rate = {r["pipeline"]: r["images_per_s"] for r in results["data"] if r["resolution"] == resolution}
            lines.append(f"| {resolution} | {rate['original']:.0f} | {rate['cache']:.0f} | {rate['fast']:.0f} | "
                         f"{rate['cache'] / rate['original']:.2f}x | {rate['fast'] / rate['original']:.2f}x |")
    if "train" in results:
        lines += ["", "## Pretraining throughput (images/s) and peak memory", "",
                  "| arch | resolution | plain + original | project + original | project / plain | "
                  "project + fast | (project + fast) / (plain + original) | peak MB plain | peak MB project |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for arch in s["archs"]:
            for resolution in s["resolutions"]:
                run = {(r["runner"], r["data"]): r for r in results["train"]
                       if r["arch"] == arch and r["resolution"] == resolution}
                plain, project, fast = (run[key] for key in TRAIN_RUNS)
                lines.append(
                    f"| {arch} | {resolution} | {plain['images_per_s']:.1f} | {project['images_per_s']:.1f} | "
                    f"{project['images_per_s'] / plain['images_per_s']:.3f} | {fast['images_per_s']:.1f} | "
                    f"{fast['images_per_s'] / plain['images_per_s']:.2f}x | {plain['peak_memory_mb']:.0f} | "
                    f"{project['peak_memory_mb']:.0f} |")
    if "epoch" in results:
        lines += ["", "## One epoch of the train split, end to end", "",
                  "Full-CUB column: this epoch's seconds per image x 5,994 train images (extrapolated).", "",
                  "| arch | resolution | images | plain + original s | project + fast s (whole fit s) | "
                  "speed-up | full CUB epoch plain / project (min) |", "|---|---:|---:|---:|---:|---:|---:|"]
        for resolution in s["resolutions"]:
            plain, project = (r for r in results["epoch"] if r["resolution"] == resolution)
            lines.append(
                f"| {plain['arch']} | {resolution} | {plain['images']} | {plain['epoch_s']:.1f} | "
                f"{project['epoch_s']:.1f} ({project['fit_s']:.1f}) | {plain['epoch_s'] / project['epoch_s']:.2f}x "
                f"| {plain['full_cub_epoch_s'] / 60:.1f} / {project['full_cub_epoch_s'] / 60:.1f} |")
    return "\n".join(lines) + "\n"


def fmt_load(load: list[float]) -> str:
    return ", ".join(f"{value:.2f}" for value in load)


if __name__ == "__main__":
    try:
        main()
    except S3LError as err:  # a wrong --root or --archs: one line, no traceback
        sys.exit(f"error: {err}")
