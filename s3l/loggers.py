"""Loggers of one stage: the CSV that every run writes, and W&B when `logger=wandb`."""

from __future__ import annotations

import csv
import netrc
import os
import sys
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger
from omegaconf import DictConfig, OmegaConf

from s3l.config import StageSpec
from s3l.resume import ResumePoint

WANDB_ID_FILE = "wandb_id.txt"


def wandb_mode(requested: str | None) -> str:
    """Where W&B runs go: the user's WANDB_MODE (or WANDB_DISABLED) first, then the config's mode, else
    online only when an API key is configured and offline otherwise (never blocks on the network)."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_DISABLED", "").lower() in ("true", "1", "yes"):
        return "disabled"
    if requested:
        return requested
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        has_key = netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        has_key = False
    return "online" if has_key else "offline"


def wandb_settings(cfg: DictConfig, spec: StageSpec, stage_dir: Path) -> dict:
    """The W&B run of one stage; W&B's own environment variables, when the user set them, win over the
    config (WANDB_PROJECT, WANDB_ENTITY, WANDB_DIR, WANDB_RUN_GROUP, WANDB_TAGS added to ours). Each stage
    stays its own run, so WANDB_NAME and WANDB_RUN_ID, which would merge them, are not used."""
    w, s, env = cfg.logger.wandb, spec.cfg, os.environ
    extra_tags = [tag for tag in env.get("WANDB_TAGS", "").split(",") if tag]
    return {
        "project": env.get("WANDB_PROJECT") or w.project,
        "entity": env.get("WANDB_ENTITY") or w.entity,
        "save_dir": env.get("WANDB_DIR") or str(stage_dir),
        "group": env.get("WANDB_RUN_GROUP") or f"{cfg.name}/{Path(cfg.paths.output_dir).name}",
        "name": f"{cfg.name}/{spec.name}",
        "job_type": s.kind,
        "mode": wandb_mode(w.mode),
        "tags": [cfg.method.name, s.architecture, f"{s.resolution}px", cfg.dataset.name, s.kind, *w.tags,
                 *extra_tags],
    }


def csv_logger(stage_dir: Path, resume: ResumePoint | None) -> CSVLogger:
    """<stage dir>/metrics.csv, written through at every logging step.

    On resume the rows of the steps before the checkpoint's are kept (Lightning's CSVLogger deletes an
    existing file) and the rest, which the resumed run logs again, dropped: a checkpoint taken after
    `global_step` optimizer steps covers the rows of steps 0 .. global_step - 1 (an epoch's own row carries
    its last step). The epoch row that Lightning writes just after an epoch-end checkpoint travels in the
    checkpoint, and is restored here if a kill came between the two. So the CSV tells the whole run once.
    """
    path = stage_dir / "metrics.csv"
    kept: list[dict] = []
    header: list[str] = []
    if resume is not None and path.is_file():
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            kept = [row for row in reader if row.get("step") and float(row["step"]) < resume.step]
    if resume is not None and resume.pending_row and not _has_row(kept, resume.pending_row):
        kept.append(resume.pending_row)
        header += [key for key in resume.pending_row if key not in header]
    # Flushed at every log call (Lightning's default, every 100 steps, loses the rows logged since the last
    # flush on a kill); one appended line per logging step costs nothing next to a training step.
    logger = CSVLogger(save_dir=stage_dir, name="", version="", flush_logs_every_n_steps=1)
    if kept:
        writer = logger.experiment  # creating it removes the old file
        writer.metrics_keys = sorted(header)
        with open(path, "w", newline="") as f:
            rows = csv.DictWriter(f, fieldnames=writer.metrics_keys)
            rows.writeheader()
            rows.writerows(kept)
    return logger


def _has_row(rows: list[dict], wanted: dict) -> bool:
    step = int(wanted["step"])
    keys = [key for key in wanted if key not in ("step", "epoch")]
    return any(row.get("step") and int(float(row["step"])) == step and all(row.get(k) for k in keys) for row in rows)


def build_loggers(cfg: DictConfig, spec: StageSpec, stage_dir: Path, resume: ResumePoint | None) -> list[Logger]:
    """CSV always (<stage dir>/metrics.csv); W&B too when configured and not disabled."""
    loggers: list[Logger] = [csv_logger(stage_dir, resume)]
    w = cfg.logger.get("wandb")
    if w is None or wandb_mode(w.mode) == "disabled":
        return loggers
    from lightning.pytorch.loggers import WandbLogger

    # The id is kept beside the checkpoints so a resumed stage continues the same W&B run.
    id_file = stage_dir / WANDB_ID_FILE
    run_id = id_file.read_text().strip() if id_file.is_file() else None
    logger = WandbLogger(
        **wandb_settings(cfg, spec, stage_dir), id=run_id, resume="allow" if run_id else None,
        config=OmegaConf.to_container(cfg, resolve=True),
    )
    stage_dir.mkdir(parents=True, exist_ok=True)
    id_file.write_text(logger.experiment.id)
    loggers.append(logger)
    return loggers


def finish_wandb() -> None:
    """Close the active W&B run, so the next stage or multirun job never writes into it."""
    if "wandb" in sys.modules and sys.modules["wandb"].run is not None:
        sys.modules["wandb"].finish()
