"""Config validation: every check that can fail fast does so before any image is read.

Each failure is an S3LError with one line that names the setting, its value, and what to change.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from s3l.config import StageSpec
from s3l.data.datasets import check_dataset_config
from s3l.errors import S3LError
from s3l.settings import check_settings
from s3l.stages.base import build_stage, stage_class
from s3l.stages.build import chain_stem

# What a required top-level key of an experiment (`???`) takes.
REQUIRED_HINTS = {
    "backbone": " (a backbone.pt, a stage directory, a .ckpt or an original S3L/MoCo checkpoint)",
    "subset": " (the subset.json that `python -m s3l.subsets` writes beside the subset it builds)",
}


def validate_config(cfg: DictConfig, specs: list[StageSpec]) -> None:
    """Checks that need only the config (and the file system for paths); settles `architecture.stem: auto`."""
    missing = [key for key in cfg if OmegaConf.is_missing(cfg, key)]  # `???` in an experiment: the user's part
    if missing:
        shown = missing[0]
        raise S3LError(f"{shown} is required by this experiment and not set: pass {shown}=..." + REQUIRED_HINTS.get(shown, ""))
    if not specs:
        raise S3LError("the chain is empty: set chain=[...] or pick a stage with stage=<name>")
    check_settings(cfg, [(spec.key, spec.cfg) for spec in specs])
    _validate_accelerator(cfg.trainer)
    check_dataset_config(cfg.dataset)
    _validate_first_init(specs[0])
    for spec in specs:
        _validate_init_path(spec)
    with open_dict(cfg):
        cfg.architecture.stem = chain_stem(cfg, specs)
    for spec in specs:
        build_stage(cfg, spec).check_config()
    for previous, spec in zip(specs, specs[1:]):
        if spec.cfg.init == "previous":
            build_stage(cfg, spec).check_handover(previous)


def _validate_init_path(spec: StageSpec) -> None:
    s, key = spec.cfg, spec.key
    if s.init not in (None, "previous") and not Path(str(s.init)).exists():
        raise S3LError(
            f"{key}.init={s.init} does not exist: give a backbone.pt, a stage directory, a .ckpt or an "
            "original S3L/MoCo checkpoint (or init=null for random initialisation)"
        )


def _validate_first_init(first: StageSpec) -> None:
    """Only pretraining may start from nothing: a probe or fine-tuning of random weights is never implied."""
    if first.cfg.init == "previous" and not stage_class(first.cfg, first.key).starts_from_nothing:
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


def validate_world(spec: StageSpec, world_size: int) -> None:
    """Checks that need the number of processes (known once the Trainer exists)."""
    batch = spec.cfg.batch_size
    if batch % world_size:
        raise S3LError(
            f"{spec.key}.batch_size={batch} (global) is not divisible by the {world_size} devices; "
            f"use a multiple of {world_size}"
        )
