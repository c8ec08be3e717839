"""The runs of `python -m s3l.bench.gpu` that go through the project's own datamodule as `train.py` builds it
(fine-tuning, and the busy fraction of pretraining), and the forward (evaluation) rate.

The pretraining rows reuse `lightning_run` and `plain_run` of `s3l.bench.training`, which feed the project
and the plain loop from the same prepared loader (`s3l.bench.data.pipeline`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, open_dict
from torch.autograd import DeviceType

from s3l.bench.data import bench_device, synchronize, window_marks
from s3l.bench.plain import mixed_precision
from s3l.bench.training import prepare_model, pretrain_config
from s3l.callbacks.cost import peak_memory_mb
from s3l.config import StageSpec, stage_specs
from s3l.data.transforms import eval_transform
from s3l.errors import S3LError
from s3l.stages.base import build_stage
from s3l.stages.build import build_trainer
from s3l.validate import validate_config


def stage_config(args: argparse.Namespace, kind: str, resolution: int, data: str,
                 run_dir: Path) -> tuple[DictConfig, StageSpec]:
    """The bench's config (`pretrain_config`) for a `pretrain` or `finetune` stage fed by the data path `data`
    (original, cache, device or resident), running until `StepWindows` stops it."""
    cfg, _ = pretrain_config(args.arch, resolution, args, run_dir, None)
    if data == "resident" and "resident" not in cfg.dataset:
        raise S3LError("dataset.resident is not a config key in this checkout")
    with open_dict(cfg):
        cfg.trainer.max_epochs = None
        cfg.dataset.cache_dir = str(args.cache_dir)
        cfg.dataset.cache = data != "original"
        cfg.dataset.augment_on = "device" if data == "device" else "workers"
        if data == "resident":
            cfg.dataset.resident = True
        cfg.dataset.eval_resolution = args.finetune_resolution
        cfg.stages.finetune.init = None
        cfg.stages.finetune.batch_size = args.finetune_batch
    specs = stage_specs(cfg)
    validate_config(cfg, specs)
    with open_dict(cfg):
        # Set after validation, which refuses it for a user's run: the windows time training alone, and
        # evaluation is timed apart (`forward_run`).
        cfg.trainer.limit_val_batches = 0
    return cfg, next(spec for spec in specs if spec.cfg.kind == kind)


class StepWindows(L.Callback):
    """Timestamps after the batches in `marks` (counted over the whole fit, across epochs), and the end of the
    fit after `stop_after` batches (the short epochs of a small dataset would otherwise end the windows)."""

    def __init__(self, marks: list[int], stop_after: int) -> None:
        self.marks, self.stop_after = set(marks), stop_after
        self.batches = 0
        self.times: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        self.batches += 1
        if self.batches in self.marks:
            synchronize(pl_module.device)
            self.times.append(time.perf_counter())
        if self.batches >= self.stop_after:
            trainer.should_stop = True


class BusyWindow(L.Callback):
    """Profiles the batches after `start` up to `end` (torch.profiler) and keeps the union of the device's
    kernel intervals over the wall time of that window (None on a CPU: there are no kernels to count)."""

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end = start, end
        self.batches = 0
        self.profiler: torch.profiler.profile | None = None
        self.began = 0.0
        self.result: dict = {}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        self.batches += 1
        if self.batches not in (self.start, self.end):
            return
        synchronize(pl_module.device)
        if self.batches == self.start:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if pl_module.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.profiler = torch.profiler.profile(activities=activities)
            self.profiler.start()
            self.began = time.perf_counter()
            return
        wall = time.perf_counter() - self.began
        self.profiler.stop()
        busy = union_seconds(kernel_intervals(self.profiler))
        self.result = {"steps": self.end - self.start, "window_s": wall, "kernel_s": busy,
                       "fraction": busy / wall if pl_module.device.type == "cuda" else None}


def kernel_intervals(profiler: torch.profiler.profile) -> list[tuple[float, float]]:
    """(start, end) in seconds of every CUDA kernel the profiler saw. Copies are left out: the copy engine
    moving bytes is not the GPU computing."""
    return [(event.time_range.start / 1e6, event.time_range.end / 1e6) for event in profiler.events()
            if event.device_type == DeviceType.CUDA and not event.name.startswith(("Memcpy", "Memset"))]


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of intervals (kernels of several streams may overlap)."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def stage_run(args: argparse.Namespace, kind: str, resolution: int, data: str, datasets: dict, run_dir: Path,
              profile_steps: int = 0) -> dict:
    """One stage through the project as `train.py` builds it (datamodule included): window timestamps, CUDA
    peak memory, and with `profile_steps` the busy fraction of that many batches after the last window."""
    cfg, spec = stage_config(args, kind, resolution, data, run_dir)
    train, test = datasets["original"], datasets["test"]
    stage = build_stage(cfg, spec)
    module = prepare_model(stage.build_module(train, world_size=1), args)
    marks = window_marks(args)
    windows = StepWindows(marks, marks[-1] + profile_steps)
    busy = BusyWindow(marks[-1], marks[-1] + profile_steps)
    callbacks = [stage.cost_meter(), windows] + ([busy] if profile_steps else [])
    L.seed_everything(0, verbose=False)
    trainer = build_trainer(cfg, spec, run_dir, callbacks, None)
    trainer.fit(module, datamodule=stage.build_datamodule(train, test))
    if windows.batches < marks[-1]:
        raise S3LError(f"the fit ended after {windows.batches} batches, before its last window ({marks[-1]})")
    return {"times": windows.times, "peak_memory_mb": peak_memory_mb(), "busy": busy.result}


def forward_run(args: argparse.Namespace, resolution: int, batch: int, datasets: dict, run_dir: Path) -> dict:
    """Evaluation images/s: the fine-tuning Classifier in eval mode on one batch of test images at
    `resolution` (eval transform) held on the device, so the rate is the model's alone, as when the test split
    is resident; the same precision and memory layout as training."""
    cfg, spec = stage_config(args, "finetune", resolution, "original", run_dir)
    device = bench_device()
    module = build_stage(cfg, spec).build_module(datasets["original"], world_size=1)
    module = prepare_model(module, args).to(device).eval()
    test, transform = datasets["test"], eval_transform(resolution)
    images = torch.stack([transform(test[i % len(test)][0]) for i in range(batch)]).to(device)
    if args.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    autocast, _ = mixed_precision(args.precision, device)
    marks, times = set(window_marks(args)), []
    with torch.inference_mode(), autocast():
        for count in range(1, max(marks) + 1):
            module(images)
            if count in marks:
                synchronize(device)
                times.append(time.perf_counter())
    return {"times": times, "peak_memory_mb": peak_memory_mb()}
