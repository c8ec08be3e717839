"""The stages Lightning trains (pretraining, fine-tuning, the conv5 warm-up, the linear probe): one run loop.

A kind supplies its module, its data, its cost factor and what it reports; this loop resumes an interrupted
attempt, trains, exports the backbone (the checkpoint contract: backbone.pt + backbone.json) and records the
result over every attempt.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
from omegaconf import OmegaConf

from s3l.callbacks.checkpointing import StageRecord, wait_for_checkpoints
from s3l.callbacks.cost import CostMeter
from s3l.callbacks.knn import KNNMonitor
from s3l.checkpoints import export_backbone
from s3l.config import stage_config_hash, stage_epochs, stage_identity
from s3l.loggers import finish_wandb
from s3l.resume import find_resume_point, last_checkpoint
from s3l.stages.base import Stage, write_text
from s3l.stages.build import apply_layout, build_cost_meter, build_trainer, init_source, load_init
from s3l.validate import validate_world

log = logging.getLogger("s3l")

RESULTS = "results.json"


class TrainingStage(Stage):
    """A stage whose module Lightning trains, resumable from its last.ckpt."""

    # Training FLOPs per image in backbone forward passes (forward + backward = 3), for the cost meter.
    forward_cost: float = 3.0

    def build_module(self, train, world_size: int) -> L.LightningModule:
        raise NotImplementedError

    def build_datamodule(self, train, test) -> L.LightningDataModule:
        raise NotImplementedError

    def check_run(self, train, world_size: int) -> None:
        """Checks that need the data and the number of processes (after validate_world); none by default."""

    def initialise(self, module: L.LightningModule, source: Path | None) -> str:
        """Load the init weights into the module; a one-line description for the logs and results."""
        return load_init(module.backbone, source)

    def knn_monitor(self, train, test) -> KNNMonitor | None:
        """The stage's online kNN monitor, if it has one."""
        return None

    def metrics(self, module: L.LightningModule, logged: dict) -> dict:
        """The stage's results from what it logged (its last values) and its module."""
        return logged

    def export_meta(self) -> dict:
        """What the exported backbone.json says about where the weights come from."""
        return {"kind": self.spec.cfg.kind, "method": "supervised"}

    def export(self, stage_dir: Path, module: L.LightningModule, trainer: L.Trainer) -> None:
        """The checkpoint contract: backbone.pt + backbone.json."""
        cfg, spec = self.cfg, self.spec
        meta = {
            "architecture": spec.cfg.architecture,
            "stem": cfg.architecture.stem,
            "resolution": spec.cfg.resolution,
            "stage": spec.name,
            **self.export_meta(),
            "dataset": cfg.dataset.name,
            "epochs": trainer.current_epoch,
            "config_hash": stage_config_hash(cfg, spec),
        }
        export_backbone(module.backbone, stage_dir, meta)

    def cost_meter(self) -> CostMeter:
        return build_cost_meter(self.cfg, self.spec, self.forward_cost)

    def run(self, stage_dir: Path, previous_dir: Path | None, datasets: tuple) -> dict:
        """Build data, module and trainer, train (resuming if interrupted), export, and record the result."""
        cfg, spec = self.cfg, self.spec
        train, test = datasets
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        cost = self.cost_meter()
        knn = self.knn_monitor(train, test)
        identity = stage_identity(cfg, spec)
        resume = find_resume_point(stage_dir, spec, identity) if cfg.resume else None
        record = StageRecord(identity)
        callbacks = [cost, record, knn] if knn else [cost, record]
        trainer = build_trainer(cfg, spec, stage_dir, callbacks, resume)
        validate_world(spec, trainer.world_size)
        self.check_run(train, trainer.world_size)
        module = self.build_module(train, trainer.world_size)
        source = init_source(spec, previous_dir)
        init = self.initialise(module, source)
        apply_layout(module, cfg.trainer)
        log.info("stage %s (%s, %s, %d px): init = %s", spec.name, spec.cfg.kind, spec.cfg.architecture,
                 spec.cfg.resolution, init)
        try:
            datamodule = self.build_datamodule(train, test)
            trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume.path) if resume else None)
            result = self.result(stage_dir, module, trainer, record.metrics(trainer), cost, datasets)
            result.update(init=init, init_from=None if source is None else str(source))
            for logger in trainer.loggers:
                logger.log_metrics({f"cost/{k}": v for k, v in result["cost"].items()}, step=trainer.global_step)
                logger.save()
        finally:
            finish_wandb()
        if trainer.is_global_zero:
            self.export(stage_dir, module, trainer)
            write_text(stage_dir / "config.yaml", OmegaConf.to_yaml(spec.cfg, resolve=True))
            wait_for_checkpoints(trainer)  # the final last.ckpt, written in the background during the export
            write_text(stage_dir / RESULTS, json.dumps(result, indent=2))  # written last: marks the stage done
        # Under DDP the other ranks would otherwise start the next stage, and read its init, before rank 0 wrote it.
        trainer.strategy.barrier("stage exported")
        return result

    def result(self, stage_dir: Path, module, trainer: L.Trainer, logged: dict, cost: CostMeter,
               datasets: tuple) -> dict:
        """What the stage achieved and cost (over every attempt), with the paths of its artifacts."""
        result = self.base_result(stage_dir, datasets, trainer.current_epoch, stage_epochs(self.cfg, self.spec))
        result["metrics"] = self.metrics(module, logged)
        result["cost"] = cost.summary()
        result["paths"].update(checkpoint=str(last_checkpoint(stage_dir)), backbone=str(stage_dir / "backbone.pt"),
                               metrics_csv=str(stage_dir / "metrics.csv"))
        return result
