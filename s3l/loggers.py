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

WANDB_ID_FILE = "wandb_id.txt"


def wandb_mode(requested: str | None) -> str:
    """online only when a W&B API key is configured; otherwise offline (never blocks on the network)."""
    if requested:
        return requested
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        has_key = netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        has_key = False
    return "online" if has_key else "offline"


def csv_logger(stage_dir: Path, resume_step: int | None) -> CSVLogger:
    """<stage dir>/metrics.csv. On resume the rows logged up to the checkpoint's step are kept (Lightning's
    CSVLogger deletes an existing file), so the CSV tells the whole run once."""
    path = stage_dir / "metrics.csv"
    kept: list[dict] = []
    if resume_step is not None and path.is_file():
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            kept = [row for row in reader if row.get("step") and float(row["step"]) <= resume_step]
    logger = CSVLogger(save_dir=stage_dir, name="", version="")
    if kept:
        writer = logger.experiment  # creating it removes the old file
        writer.metrics_keys = sorted(header)
        with open(path, "w", newline="") as f:
            rows = csv.DictWriter(f, fieldnames=writer.metrics_keys)
            rows.writeheader()
            rows.writerows(kept)
    return logger


def build_loggers(cfg: DictConfig, spec: StageSpec, stage_dir: Path, resume_step: int | None) -> list[Logger]:
    """CSV always (<stage dir>/metrics.csv); W&B too when configured and not disabled."""
    loggers: list[Logger] = [csv_logger(stage_dir, resume_step)]
    w = cfg.logger.get("wandb")
    if w is None or wandb_mode(w.mode) == "disabled":
        return loggers
    from lightning.pytorch.loggers import WandbLogger

    # The id is kept beside the checkpoints so a resumed stage continues the same W&B run.
    id_file = stage_dir / WANDB_ID_FILE
    run_id = id_file.read_text().strip() if id_file.is_file() else None
    s = spec.cfg
    logger = WandbLogger(
        project=w.project, entity=w.entity, group=f"{cfg.name}/{Path(cfg.paths.output_dir).name}",
        name=f"{cfg.name}/{spec.name}", job_type=s.kind, save_dir=str(stage_dir), mode=wandb_mode(w.mode),
        id=run_id, resume="allow" if run_id else None,
        tags=[cfg.method.name, s.architecture, f"{s.resolution}px", cfg.dataset.name, s.kind, *w.tags],
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
