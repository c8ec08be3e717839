"""Checkpoints that survive kills: atomic writes, RNG states for exact resumes, saves on pre-emption,
and a guard that stops on a non-finite loss before it can overwrite the last good checkpoint."""

from __future__ import annotations

import logging
import random
import signal
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins import CheckpointIO
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.plugins.io import AsyncCheckpointIO
from torch import Tensor

from s3l.checkpoints import write_atomically
from s3l.errors import S3LError

log = logging.getLogger("s3l")


def previous_checkpoint(path: Path) -> Path:
    """Where the checkpoint that `path` replaced is kept: `last.ckpt` -> `last.previous.ckpt`."""
    return path.with_name(f"{path.stem}.previous{path.suffix}")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file in the same directory, then rename it into place, keeping
    the checkpoint it replaces as `<name>.previous.ckpt`.

    Lightning's own writer opens the final path directly, so a kill during a save leaves a truncated
    `last.ckpt`; here the previous checkpoint stays whole until the new one is complete, and stays on disk
    after it, so a new checkpoint that later proves unreadable (a disk error, a bad copy) has a fallback.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda tmp: super(AtomicCheckpointIO, self).save_checkpoint(
            checkpoint, tmp, storage_options), keep_previous=previous_checkpoint(path))


class LastCheckpoint(L.Callback):
    """Rewrite `last.ckpt` (the full training state) at an epoch's end every N epochs or once N minutes of
    training have passed since the last write, every N training steps if asked, and at the end of training.

    Lightning's ModelCheckpoint only refreshes `last` when it also saves a top-k file; here the one file
    a resume needs is written at exactly the configured frequency. The time interval keeps the cost of a
    checkpoint fixed when epochs are short (small data: a 46-step CUB epoch takes seconds on a GPU), and
    epoch ends keep resumes exact (the loaders restart cleanly at an epoch; a SIGTERM still saves at once).
    """

    def __init__(self, path: Path, every_n_epochs: int | None, every_n_train_steps: int | None,
                 every_n_minutes: float | None = None) -> None:
        self.path = path
        self.every_n_epochs = every_n_epochs
        self.every_n_train_steps = every_n_train_steps
        self.every_n_seconds = None if every_n_minutes is None else 60.0 * every_n_minutes
        self._last_write = time.monotonic()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_write = time.monotonic()

    def _save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)
        self._last_write = time.monotonic()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every_n_train_steps and trainer.global_step % self.every_n_train_steps == 0:
            self._save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        due = (
            epoch >= (trainer.max_epochs or epoch)
            or (self.every_n_epochs and epoch % self.every_n_epochs == 0)
            or (self.every_n_seconds is not None and time.monotonic() - self._last_write >= self.every_n_seconds)
        )
        if due:
            self._save(trainer)


class BackgroundCheckpointIO(AsyncCheckpointIO):
    """Lightning's AsyncCheckpointIO (tensors copied on the training thread, the file written by another), whose
    last write outlives `fit`: Lightning's teardown at the end of `fit` does not wait for it, so the stage's
    export overlaps it, and `wait_for_checkpoints` waits (before a stage's results.json, and on SIGTERM)."""

    def teardown(self) -> None:
        pass

    def wait(self) -> None:
        super().teardown()  # joins the writer thread and raises its error, if any; the next save starts another


def checkpoint_io(async_write: bool) -> CheckpointIO:
    """Atomic checkpoint writes, in a background thread when `async_write`."""
    return BackgroundCheckpointIO(AtomicCheckpointIO()) if async_write else AtomicCheckpointIO()


def wait_for_checkpoints(trainer: L.Trainer) -> None:
    """Block until every checkpoint submitted so far is on disk (a no-op for synchronous writes)."""
    if isinstance(trainer.strategy.checkpoint_io, BackgroundCheckpointIO):
        trainer.strategy.checkpoint_io.wait()


class StageRecord(L.Callback):
    """What a checkpoint must carry beyond the training state, so that nothing is lost on a kill.

    - the stage's identity (its resolved settings, `s3l.config.stage_identity`), so that a resume with other
      settings is refused instead of silently continuing the old run;
    - the stage's metrics so far (`trainer.callback_metrics`), so that a stage killed after its final
      checkpoint but before its results.json reports the same metrics when the rerun finds nothing to train;
    - the epoch's metrics.csv row when the checkpoint is saved at an epoch's end: Lightning logs that row only
      after every `on_train_epoch_end` hook (s3l.loggers.csv_logger restores it if a kill came in between).
    """

    KEY = "s3l"

    def __init__(self, identity: dict) -> None:
        self.identity = identity
        self.restored_metrics: dict[str, float] = {}
        self._epoch_row_pending = False

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_row_pending = False

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_row_pending = True  # until Lightning logs it, after the last on_train_epoch_end hook

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_row_pending = False

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        metrics = {**self.restored_metrics, **scalar_metrics(trainer)}
        pending = pending_epoch_row(trainer) if self._epoch_row_pending else None
        checkpoint[self.KEY] = {"identity": self.identity, "metrics": metrics, "pending_row": pending}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self.restored_metrics = dict(checkpoint.get(self.KEY, {}).get("metrics", {}))

    def metrics(self, trainer: L.Trainer) -> dict[str, float]:
        """The stage's metrics: those of the attempts before a resume, updated by this attempt's."""
        return {**self.restored_metrics, **scalar_metrics(trainer)}


def pending_epoch_row(trainer: L.Trainer) -> dict | None:
    """The row Lightning logs for the epoch that just ended (call it from an `on_train_epoch_end` hook).

    Read from the logger connector, Lightning's own source of that row (`update_train_epoch_metrics` logs
    `metrics["log"]` at the epoch's last step); there is no public API for it.
    """
    if trainer._results is None:
        return None
    row = {key: float(value) for key, value in trainer._logger_connector.metrics["log"].items()
           if value.numel() == 1}
    if not row:
        return None
    return {"epoch": trainer.current_epoch, "step": trainer.global_step - 1, **row}


def scalar_metrics(trainer: L.Trainer) -> dict[str, float]:
    """The trainer's logged scalar metrics as plain floats."""
    return {key: float(value) for key, value in trainer.callback_metrics.items() if value.numel() == 1}


def rng_states() -> dict[str, Any]:
    """The Python, NumPy, torch (and initialised CUDA) generator states, as plain lists and tensors, so that a
    checkpoint holding them still loads with torch.load(weights_only=True)."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [name, keys.tolist(), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_states(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RNGStateCheckpoint(L.Callback):
    """Save and restore the Python, NumPy and torch RNG states with every checkpoint, so that a run
    resumed from an end-of-epoch checkpoint draws the same shuffles and augmentations as one that
    never stopped (Lightning restores model, optimizer and loops, but not the RNGs).

    A mid-epoch resume (a loader that continues its epoch, e.g. LitData's) creates the epoch's loader iterator
    after the restore, which draws a base seed from torch's generator; the run that never stopped drew it at
    the epoch's start. So the states are set again at the first batch of a resume that did not start an epoch.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return rng_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        set_rng_states(state_dict)
        self._pending = state_dict

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pending = None  # an epoch-start resume: the states set at load time come before the same draws

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        if self._pending is not None:
            set_rng_states(self._pending)
            self._pending = None

class PreemptionCheckpoint(L.Callback):
    """On SIGTERM (or SIGUSR1 where SLURM's own requeue handler is not installed) save `last.ckpt` at the
    end of the current batch, say so, and stop; re-running the same command resumes there."""

    def __init__(self, last_checkpoint: Path) -> None:
        self.last_checkpoint = last_checkpoint
        self.signal: int | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if hasattr(signal, "SIGUSR1") and signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGUSR1, self._record)

    def _record(self, signum: int, frame) -> None:
        self.signal = signum

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not (trainer.received_sigterm or self.signal):
            return
        trainer.save_checkpoint(self.last_checkpoint, weights_only=False)
        wait_for_checkpoints(trainer)
        name = "SIGTERM" if trainer.received_sigterm else signal.Signals(self.signal).name
        log.warning("%s received: saved %s at epoch %d, step %d; run the same command to resume",
                    name, self.last_checkpoint, trainer.current_epoch, trainer.global_step)
        if self.signal:  # Lightning itself stops on SIGTERM right after this hook
            raise SystemExit(128 + self.signal)


class NonFiniteLossGuard(L.Callback):
    """Stop at a NaN/Inf loss, before any checkpoint can store the broken weights.

    Reading the loss on the host every step would stall a GPU at every step, so the first non-finite loss (its
    value, epoch and step) is recorded on the device, and read every `check_every_n_steps` steps, before every
    checkpoint is written and at the end of training: training stops at most that many steps after the bad one,
    never with a checkpoint or an export of its weights.
    """

    def __init__(self, last_checkpoint: Path, check_every_n_steps: int = 1) -> None:
        self.last_checkpoint = last_checkpoint
        self.check_every_n_steps = check_every_n_steps
        self._first_bad: Tensor | None = None  # (loss, epoch, step) of the first non-finite loss; step -1: none

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        loss = loss.detach().float().reshape(-1)[:1]
        if self._first_bad is None:
            self._first_bad = torch.tensor([0.0, 0.0, -1.0], device=loss.device)
        here = torch.cat([loss, loss.new_tensor([trainer.current_epoch, trainer.global_step])])
        is_first = ~torch.isfinite(loss) & (self._first_bad[2] < 0)
        self._first_bad = torch.where(is_first, here, self._first_bad)
        if trainer.global_step % self.check_every_n_steps == 0:
            self.check()

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self.check()  # raising here writes nothing: the last good checkpoint stays

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check()

    def check(self) -> None:
        """Raise if a non-finite loss was recorded (one host read)."""
        if self._first_bad is None:
            return
        loss, epoch, step = self._first_bad.tolist()
        if step < 0:
            return
        last = (
            f"the last good checkpoint {self.last_checkpoint} is kept intact"
            if self.last_checkpoint.is_file() else "no checkpoint had been written yet"
        )
        raise S3LError(
            f"non-finite loss ({loss}) at epoch {int(epoch)}, step {int(step)}: "
            f"training stopped and {last}; lower the learning rate or check the data"
        )
