"""The benchmark's training runs: the project (a method under its Trainer) and a plain PyTorch loop (MoCo v2)."""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import statistics
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict
from torch.utils.data import DataLoader

from s3l.bench.data import (
    bench_device,
    make_loader,
    pipeline,
    synchronize,
    window_marks,
    window_rates,
)
from s3l.bench.plain import mixed_precision, plain_step
from s3l.callbacks.cost import peak_memory_mb
from s3l.config import StageSpec, register_resolvers, stage_specs
from s3l.data.device_augment import realize_views
from s3l.data.views import view_specs
from s3l.methods.base import SSLMethod
from s3l.optim import build_sgd
from s3l.stages.base import build_stage
from s3l.stages.build import build_trainer
from s3l.validate import validate_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
CUB_TRAIN_IMAGES = 5994  # the full CUB-200-2011 train split, for extrapolated epoch times


def pretrain_config(arch: str, resolution: int, args: argparse.Namespace, run_dir: Path,
                    limit_batches: int | None, method: str = "mocov2") -> tuple[DictConfig, StageSpec]:
    """The project's config of a pretraining stage of `method` on CUB with the views of `--augmentation`, as
    `train.py` would compose it (the method's recipe, the bench's batch; no warm-up: the bench times steps)."""
    register_resolvers()
    overrides = [
        "experiment=s3l", "chain=pretrain_finetune", "dataset=cub200", f"dataset.root={args.root}",
        f"method={method}", "method.warmup_epochs=0", f"augmentation={args.augmentation}",
        # The plain loop's network (s3l.bench.plain): auto would give a tiny bench at 32 px the CIFAR stem.
        f"architecture={arch}", "architecture.stem=imagenet", f"stages.pretrain.resolution={resolution}",
        f"method.batch_size={args.batch}",
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


class LoaderDataModule(L.LightningDataModule):
    """A prepared DataLoader with the project's batch hook (`StageDataModule` augments `RawViews` there)."""

    def __init__(self, loader: DataLoader) -> None:
        super().__init__()
        self.loader = loader

    def train_dataloader(self) -> DataLoader:
        return self.loader

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        return realize_views(batch)


def prepare_model(module: SSLMethod, args: argparse.Namespace) -> SSLMethod:
    """The options both loops share: channels_last weights, compiled encoders."""
    if args.channels_last:
        module = module.to(memory_format=torch.channels_last)
    if args.compile:
        for encoder in (child for child in module.children() if hasattr(child, "backbone")):
            encoder.compile()
    return module


def lightning_run(job: dict) -> dict:
    """The project: the method and Trainer from `s3l.stages.build`, fed by the given pipeline."""
    args, run_dir = job["args"], Path(job["run_dir"])
    marks = window_marks(args) if job["batches"] else []
    cfg, spec = pretrain_config(job["arch"], job["resolution"], args, run_dir, job["batches"], job["method"])
    stage = build_stage(cfg, spec)
    module = prepare_model(stage.build_module(job["datasets"]["original"], world_size=1), args)
    timer = WindowTimer(marks)
    trainer = build_trainer(cfg, spec, run_dir, [stage.cost_meter(), timer], None)
    loader = make_loader(*pipeline(job["data"], job["datasets"], job["resolution"], view_specs(cfg.augmentation)),
                         args.batch, args.workers, job["batches"])
    start = time.perf_counter()
    trainer.fit(module, datamodule=LoaderDataModule(loader))
    fit_s = time.perf_counter() - start
    return {"times": timer.times, "epoch_s": timer.epoch_end - timer.epoch_start, "fit_s": fit_s,
            "steps": trainer.global_step, "peak_memory_mb": peak_memory_mb()}


def plain_run(job: dict) -> dict:
    """The plain loop: same model, optimizer settings, batch and DataLoader; no Lightning."""
    args, run_dir = job["args"], Path(job["run_dir"])
    marks = set(window_marks(args)) if job["batches"] else set()
    cfg, spec = pretrain_config(job["arch"], job["resolution"], args, run_dir, job["batches"], job["method"])
    device = bench_device()
    module = build_stage(cfg, spec).build_module(job["datasets"]["original"], world_size=1).to(device).train()
    module = prepare_model(module, args)
    s = spec.cfg
    optimizer = build_sgd(module.encoder_q.parameters(), s.lr, s.momentum, s.weight_decay)
    autocast, scaler = mixed_precision(args.precision, device)
    loader = make_loader(*pipeline(job["data"], job["datasets"], job["resolution"], view_specs(cfg.augmentation)),
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


def train_runs(pipelines: list[str], method: str = "mocov2") -> list[tuple[str, str]]:
    """(runner, pipeline) of the train section: the plain loop on the original pipeline (MoCo v2's: it is
    upstream's step), then the project on each chosen pipeline except `cache` (which `fast` supersedes)."""
    plain = [("plain", "original")] if method == "mocov2" else []
    return plain + [("lightning", name) for name in pipelines if name != "cache"]


def bench_train(args: argparse.Namespace, datasets: dict, scratch: Path) -> list[dict]:
    """Steady-state pretraining images/s of the plain loop and the project, in fresh processes.

    With --repeats R, the runs of one (arch, resolution) go R times in alternating order (ABC CBA ...), so a
    machine that slowly gets busier or quieter favours none of them; each rate is the median of all windows.
    """
    rows = []
    batches = window_marks(args)[-1]
    for method in args.methods:
        runs = train_runs(args.pipelines, method)
        for arch in args.archs:
            for resolution in args.resolutions:
                results: dict[tuple, list[dict]] = {run: [] for run in runs}
                for repeat in range(args.repeats):
                    for runner, data in runs if repeat % 2 == 0 else runs[::-1]:
                        job = {"args": args, "method": method, "arch": arch, "resolution": resolution,
                               "runner": runner, "data": data, "datasets": datasets, "batches": batches,
                               "run_dir": str(scratch / f"{method}_{arch}_{resolution}_{runner}_{data}_{repeat}")}
                        results[(runner, data)].append(isolated(job))
                for (runner, data), done in results.items():
                    rows.append(train_row(args, method, arch, resolution, runner, data, done))
    return rows


def train_row(args: argparse.Namespace, method: str, arch: str, resolution: int, runner: str, data: str,
              done: list[dict]) -> dict:
    """One run's images/s (median over every window of every repeat) and peak memory; printed as it comes."""
    rates = [rate for result in done for rate in window_rates(result["times"], args.steps, args.batch)]
    peak = max(result["peak_memory_mb"] for result in done)
    row = {"method": method, "arch": arch, "resolution": resolution, "runner": runner, "data": data,
           "images_per_s": statistics.median(rates), "window_images_per_s": rates, "repeats": len(done),
           "peak_memory_mb": peak}
    print(f"train {method} {arch} {resolution:>4} px {runner:>9} + {data:>8} data: "
          f"{row['images_per_s']:7.1f} img/s, peak {peak:.0f} MB", flush=True)
    return row


def bench_epoch(args: argparse.Namespace, datasets: dict, scratch: Path) -> list[dict]:
    """One epoch of the train split: the plain loop with the original pipeline, the project with the fast one."""
    rows = []
    arch = args.archs[0]
    for resolution in args.resolutions:
        for runner, data in (("plain", "original"), ("lightning", "fast")):
            job = {"args": args, "method": "mocov2", "arch": arch, "resolution": resolution, "runner": runner,
                   "data": data, "datasets": datasets, "batches": None,
                   "run_dir": str(scratch / f"epoch_{arch}_{resolution}_{runner}_{data}")}
            result = isolated(job)
            images = result["steps"] * args.batch
            rows.append({"arch": arch, "resolution": resolution, "runner": runner, "data": data,
                         "images": images, "epoch_s": result["epoch_s"], "fit_s": result["fit_s"],
                         "full_cub_epoch_s": result["epoch_s"] * CUB_TRAIN_IMAGES / images})
            print(f"epoch {arch} {resolution:>4} px {runner:>9} + {data:>8} data: {result['epoch_s']:6.1f} s "
                  f"({images} images)", flush=True)
    return rows
