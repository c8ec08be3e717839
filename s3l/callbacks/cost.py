"""Cost accounting: what a stage cost in time, throughput, memory and FLOPs."""

from __future__ import annotations

import resource
import sys
import time

import lightning as L
import torch


def peak_memory_mb() -> float:
    """Peak GPU memory allocated when training on CUDA, else the process's peak resident set size."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


class CostMeter(L.Callback):
    """Measures wall-clock, training images/s (data loading included, validation excluded) and peak memory.

    `train_flops_per_image` is the training cost of one input image (e.g. 3x the forward FLOPs for a
    supervised step; MoCo adds the key encoder's forward), so total PFLOPs = images seen x that.

    The totals travel in every checkpoint (Lightning saves a callback's `state_dict`), so a stage that was
    killed and resumed reports the cost of all its attempts, up to each attempt's last checkpoint, and how
    many attempts there were.
    """

    def __init__(self, train_flops_per_image: float, forward_gflops_per_image: float) -> None:
        self.train_flops_per_image = train_flops_per_image
        self.forward_gflops_per_image = forward_gflops_per_image
        # Totals of the attempts before this one (restored from the checkpoint this attempt resumed).
        self.before = {"attempts": 0, "wall_seconds": 0.0, "device_seconds": 0.0, "train_seconds": 0.0,
                       "images": 0, "peak_memory_mb": 0.0}
        self.images = 0
        self.train_seconds = 0.0
        self.fit_start = time.perf_counter()
        self.fit_end: float | None = None
        self.devices = 1
        self._epoch_start: float | None = None
        self._last_batch_end = 0.0

    def state_dict(self) -> dict[str, float]:
        return self.totals()

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self.before = dict(state_dict)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit_start = time.perf_counter()
        self.devices = trainer.world_size
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.reset_peak_memory_stats()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = self._last_batch_end = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # A run resumed mid-epoch (from a step or pre-emption checkpoint) starts without on_train_epoch_start.
        if self._epoch_start is None:
            self._epoch_start = self._last_batch_end = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.images += batch[1].shape[0] * trainer.world_size
        self._last_batch_end = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._epoch_start is not None:
            self.train_seconds += self._last_batch_end - self._epoch_start
        self._epoch_start = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit_end = time.perf_counter()

    def totals(self) -> dict[str, float]:
        """Every attempt so far, this one up to now (or to its end): what a checkpoint saves."""
        wall = (self.fit_end or time.perf_counter()) - self.fit_start
        in_epoch = self._last_batch_end - self._epoch_start if self._epoch_start is not None else 0.0
        b = self.before
        return {
            "attempts": b["attempts"] + 1,
            "wall_seconds": b["wall_seconds"] + wall,
            "device_seconds": b["device_seconds"] + wall * self.devices,
            "train_seconds": b["train_seconds"] + self.train_seconds + in_epoch,
            "images": b["images"] + self.images,
            "peak_memory_mb": max(b["peak_memory_mb"], peak_memory_mb()),
        }

    def summary(self) -> dict[str, float]:
        """The cost figures that go to results.json and the logs."""
        t = self.totals()
        return {
            "wall_clock_s": round(t["wall_seconds"], 2),
            "train_images": t["images"],
            "images_per_s": round(t["images"] / t["train_seconds"], 2) if t["train_seconds"] else 0.0,
            "peak_memory_mb": round(t["peak_memory_mb"], 1),
            "forward_gflops_per_image": round(self.forward_gflops_per_image, 4),
            "train_pflops": t["images"] * self.train_flops_per_image / 1e15,
            "device_hours": t["device_seconds"] / 3600,
            "attempts": t["attempts"],
        }
