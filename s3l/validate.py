"""Config validation: every check that can fail fast does so before any image is read.

Each failure is an S3LError with one line that names the setting, its value, and what to change.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from s3l.config import StageSpec, stage_epochs
from s3l.data.subset import read_subset
from s3l.errors import S3LError
from s3l.methods.base import method_class
from s3l.models.resnet import full_architecture
from s3l.settings import check_settings

DATASETS_WITH_ROOT = ("cub200", "imagefolder")


def validate_config(cfg: DictConfig, specs: list[StageSpec]) -> None:
    """Checks that need only the config (and the file system for paths)."""
    if not specs:
        raise S3LError("the chain is empty: set chain=[...] or pick a stage with stage=<name>")
    check_settings(cfg, [(spec.key, spec.cfg) for spec in specs])
    _validate_accelerator(cfg.trainer)
    if cfg.dataset.name in DATASETS_WITH_ROOT and not cfg.dataset.root:
        raise S3LError(
            f"dataset.root is not set for dataset={cfg.dataset.name}: pass dataset.root=/path/to/"
            + ("CUB_200_2011" if cfg.dataset.name == "cub200" else "folder_with_train_and_val")
        )
    if cfg.dataset.resident and cfg.dataset.name not in DATASETS_WITH_ROOT:
        raise S3LError(
            "dataset.resident=true loads the resized-image cache of a dataset read from files "
            f"({', '.join(DATASETS_WITH_ROOT)}), not dataset={cfg.dataset.name}: set dataset.resident=false"
        )
    if cfg.dataset.get("subset") is not None:
        if cfg.dataset.name not in DATASETS_WITH_ROOT:
            raise S3LError(
                f"dataset.subset keeps listed files of a dataset read from files ({', '.join(DATASETS_WITH_ROOT)}),"
                f" not dataset={cfg.dataset.name}: set dataset.subset=null"
            )
        read_subset(cfg.dataset.subset)  # a missing or malformed list fails now, before any image is read
    _validate_first_init(specs[0])
    for spec in specs:
        _validate_stage(cfg, spec)
    for previous, spec in zip(specs, specs[1:]):
        if spec.cfg.init == "previous":
            _validate_handover(previous, spec)


def _validate_stage(cfg: DictConfig, spec: StageSpec) -> None:
    s, key = spec.cfg, spec.key
    if s.init not in (None, "previous") and not Path(str(s.init)).exists():
        raise S3LError(
            f"{key}.init={s.init} does not exist: give a backbone.pt, a stage directory, a .ckpt or an "
            "original S3L/MoCo checkpoint (or init=null for random initialisation)"
        )
    if s.kind == "pretrain":
        _validate_warmup(cfg, spec)
        method_class(cfg.method).check_config(cfg.method, spec)


def _validate_first_init(first: StageSpec) -> None:
    """Only pretraining may start from nothing: a probe or fine-tuning of random weights is never implied."""
    if first.cfg.init == "previous" and first.cfg.kind != "pretrain":
        raise S3LError(
            f"{first.key}.init=previous but {first.key} is the first stage: pass {first.key}.init=/path/to/"
            "backbone.pt (or a stage directory, a .ckpt, an original S3L/MoCo checkpoint), or "
            f"{first.key}.init=null to start from random weights"
        )


def _validate_accelerator(trainer: DictConfig) -> None:
    """A GPU run on a machine without one fails here, not in Lightning's traceback."""
    if trainer.accelerator not in ("gpu", "cuda"):
        return
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if available == 0:
        raise S3LError(
            f"trainer.accelerator={trainer.accelerator} but this machine has no usable GPU "
            "(torch.cuda.is_available() is false): use trainer=cpu, or trainer.accelerator=auto"
        )
    devices = trainer.devices
    wanted = len(devices) if not isinstance(devices, int | str) else devices
    if isinstance(wanted, int) and wanted > available:
        raise S3LError(
            f"trainer.devices={devices} asks for {wanted} GPUs but this machine has {available}: "
            f"use trainer.devices={available} (or fewer)"
        )


def _validate_warmup(cfg: DictConfig, spec: StageSpec) -> None:
    epochs = stage_epochs(cfg, spec)
    if spec.cfg.warmup_epochs >= epochs:
        capped = f" (trainer.max_epochs={cfg.trainer.max_epochs})" if epochs < spec.cfg.epochs else ""
        raise S3LError(
            f"{spec.key}.warmup_epochs={spec.cfg.warmup_epochs} leaves nothing of the {epochs} epochs this stage "
            f"trains{capped}: lower it, e.g. method.warmup_epochs=0"
        )


def _validate_handover(previous: StageSpec, spec: StageSpec) -> None:
    """The previous stage's network must fit this one (custom -> full only through the conv5 warm-up)."""
    before, now = previous.cfg.architecture, spec.cfg.architecture
    if spec.cfg.kind == "warmup":
        if now != full_architecture(before):
            raise S3LError(
                f"{spec.key}: the conv5 warm-up grows {before} into {full_architecture(before)}, "
                f"but {spec.key}.architecture={now}; set it to {full_architecture(before)}"
            )
        return
    if now == before:
        return
    if now == full_architecture(before):
        raise S3LError(
            f"{spec.key} ({now}) cannot start from {previous.key} ({before}, no conv5): add a warm-up stage "
            f"between them (chain=small_architecture) or set {spec.key}.architecture={before}"
        )
    raise S3LError(
        f"{spec.key}.architecture={now} cannot start from {previous.key}.architecture={before}: "
        "chained stages must use the same network"
    )


def validate_world(spec: StageSpec, world_size: int) -> None:
    """Checks that need the number of processes (known once the Trainer exists)."""
    batch = spec.cfg.batch_size
    if batch % world_size:
        raise S3LError(
            f"{spec.key}.batch_size={batch} (global) is not divisible by the {world_size} devices; "
            f"use a multiple of {world_size}"
        )
