"""Where an interrupted stage continues: its newest intact checkpoint, made with the same settings.

A stage keeps `checkpoints/last.ckpt`, the checkpoint that one replaced (`last.previous.ckpt`), and, under
SLURM auto-requeue, Lightning's `hpc_ckpt_*.ckpt`. The newest of them that reads back as a checkpoint is the
resume point; unreadable ones (zero bytes, not a checkpoint, a pickle that `weights_only` refuses) are set
aside as `<name>.unreadable` so they can never shadow a good one again. A checkpoint written with other
settings (`s3l.config.stage_identity`) is never resumed silently.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from s3l.callbacks.checkpointing import StageRecord, previous_checkpoint
from s3l.config import StageSpec, describe_changes
from s3l.errors import S3LError
from s3l.rundir import is_ddp_child

log = logging.getLogger("s3l")

REQUIRED_KEYS = ("state_dict", "epoch", "global_step", "loops")


@dataclass(frozen=True)
class ResumePoint:
    """An intact checkpoint of this stage, made with this stage's settings."""

    path: Path
    epoch: int
    step: int
    pending_row: dict | None  # the metrics.csv row Lightning logs right after an epoch-end checkpoint


def last_checkpoint(stage_dir: Path) -> Path:
    """Where a stage keeps its full training state for resuming."""
    return stage_dir / "checkpoints" / "last.ckpt"


def checkpoint_candidates(stage_dir: Path) -> list[Path]:
    """Every checkpoint a stage could resume from, newest first."""
    last = last_checkpoint(stage_dir)
    found = [p for p in (last, previous_checkpoint(last), *stage_dir.glob("hpc_ckpt_*.ckpt")) if p.is_file()]
    return sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True)


def read_checkpoint(path: Path) -> tuple[Mapping | None, str]:
    """(the checkpoint, "") when `path` reads back as a Lightning checkpoint, else (None, why not)."""
    try:
        # mmap: the tensors are not read, only the structure (a multi-GB checkpoint costs milliseconds).
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad files
        reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        return None, reason
    if not isinstance(checkpoint, Mapping) or any(key not in checkpoint for key in REQUIRED_KEYS):
        return None, f"not a Lightning checkpoint (needs {', '.join(REQUIRED_KEYS)})"
    return checkpoint, ""


def find_resume_point(stage_dir: Path, spec: StageSpec, identity: dict) -> ResumePoint | None:
    """The newest intact checkpoint of the stage, or None when it has none (a fresh start).

    Raises S3LError when the stage has checkpoints but none is intact, or when the intact one was made
    with other settings than `identity`.
    """
    unreadable: list[tuple[Path, str]] = []
    for path in checkpoint_candidates(stage_dir):
        checkpoint, reason = read_checkpoint(path)
        if checkpoint is None:
            unreadable.append((path, reason))
            continue
        _set_aside(unreadable)
        _check_same_settings(checkpoint, path, spec, identity)
        record = checkpoint.get(StageRecord.KEY, {})
        point = ResumePoint(path, int(checkpoint["epoch"]), int(checkpoint["global_step"]), record.get("pending_row"))
        log.info("stage %s: resuming from %s (epoch %d, step %d)", spec.name, path, point.epoch, point.step)
        return point
    if unreadable:
        path, reason = unreadable[0]
        raise S3LError(
            f"cannot resume {spec.key}: checkpoint {path} is unreadable ({reason}) and the stage has no earlier "
            f"intact checkpoint; delete {path.parent} to restart the stage, or pass resume=false for a fresh run"
        )
    return None


def _set_aside(unreadable: list[tuple[Path, str]]) -> None:
    if is_ddp_child():  # rank 0 renames; the other ranks of the run read the same directory
        return
    for path, reason in unreadable:
        aside = path.with_name(path.name + ".unreadable")
        path.replace(aside)
        log.warning("checkpoint %s is unreadable (%s): set aside as %s, resuming from an earlier one",
                    path, reason, aside.name)


def _check_same_settings(checkpoint: Mapping, path: Path, spec: StageSpec, identity: dict) -> None:
    before = checkpoint.get(StageRecord.KEY, {}).get("identity")
    if before is None or before == identity:
        return
    raise S3LError(
        f"{path} was written by {spec.key} with other settings than now ({describe_changes(before, identity, spec.key)}): "
        "run the original command to resume it, or pass resume=false to start a fresh run directory"
    )
