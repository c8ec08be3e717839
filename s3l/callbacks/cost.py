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
    """

    def __init__(self, train_flops_per_image: float, forward_gflops_per_image: float) -> None:
        self.train_flops_per_image = train_flops_per_image
        self.forward_gflops_per_image = forward_gflops_per_image
        self.images = 0
        self.train_seconds = 0.0
        self.fit_start = 0.0
        self.wall_seconds = 0.0
        self._epoch_start = 0.0
        self._last_batch_end = 0.0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit_start = time.perf_counter()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.reset_peak_memory_stats()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = self._last_batch_end = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        images = batch[1].shape[0] * trainer.world_size
        self.images += images
        self._last_batch_end = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.train_seconds += self._last_batch_end - self._epoch_start

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.wall_seconds = time.perf_counter() - self.fit_start

    def summary(self, devices: int) -> dict[str, float]:
        """The cost figures that go to results.json and the logs."""
        return {
            "wall_clock_s": round(self.wall_seconds, 2),
            "train_images": self.images,
            "images_per_s": round(self.images / self.train_seconds, 2) if self.train_seconds else 0.0,
            "peak_memory_mb": round(peak_memory_mb(), 1),
            "forward_gflops_per_image": round(self.forward_gflops_per_image, 4),
            "train_pflops": self.images * self.train_flops_per_image / 1e15,
            "device_hours": self.wall_seconds * devices / 3600,
        }
