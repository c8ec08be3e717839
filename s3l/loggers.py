"""Loggers of one stage: the CSV that every run writes, and W&B when `logger=wandb`."""

from __future__ import annotations

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


def build_loggers(cfg: DictConfig, spec: StageSpec, stage_dir: Path) -> list[Logger]:
    """CSV always (<stage dir>/metrics.csv); W&B too when configured and not disabled."""
    loggers: list[Logger] = [CSVLogger(save_dir=stage_dir, name="", version="")]
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
