"""The chain: run each configured stage in its own directory, hand its exported weights to the next,
skip stages that already finished, and summarise everything in results.json and a printed table."""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from s3l import __version__
from s3l.callbacks.checkpointing import StageRecord, wait_for_checkpoints
from s3l.checkpoints import export_backbone, write_atomically
from s3l.config import (
    HydraTask,
    StageSpec,
    config_hash,
    stage_config_hash,
    stage_epochs,
    stage_identity,
    stage_specs,
)
from s3l.errors import S3LError
from s3l.loggers import finish_wandb
from s3l.methods.base import SSLMethod, method_class
from s3l.quiet import silence_dependency_noise
from s3l.report import print_config_tree, print_results_table
from s3l.resume import find_resume_point, last_checkpoint
from s3l.rundir import check_same_config, claim, keep_ddp_ranks_in_this_sweep
from s3l.stages.build import (
    METHOD_STATE,
    apply_layout,
    build_cost_meter,
    build_datamodule,
    build_datasets,
    build_knn_monitor,
    build_module,
    build_trainer,
    init_source,
    initialise,
)
from s3l.validate import validate_config, validate_world

log = logging.getLogger("s3l")

RESULTS = "results.json"


def main(cfg: DictConfig) -> float | None:
    """Run the chain; a user-fixable problem ends it with one line on stderr and exit status 2."""
    HydraTask.started = True
    silence_dependency_noise()
    keep_ddp_ranks_in_this_sweep()
    try:
        return run_chain(cfg)
    except S3LError as err:
        log.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except SIGTERMException:  # pre-empted: last.ckpt was saved; exit like a process ended by SIGTERM
        sys.exit(128 + signal.SIGTERM)


def run_chain(cfg: DictConfig) -> float | None:
    """Validate the whole config, then run (or skip) each stage in order."""
    specs = stage_specs(cfg)
    validate_config(cfg, specs)
    out_dir = Path(cfg.paths.output_dir)
    lock = claim(out_dir)
    try:
        return _run_claimed_chain(cfg, specs, out_dir)
    finally:
        if lock is not None:
            lock.release()


def _run_claimed_chain(cfg: DictConfig, specs: list[StageSpec], out_dir: Path) -> float | None:
    if cfg.print_config:
        print_config_tree(cfg)
    _write_text(out_dir / "config_resolved.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    datasets = None
    stage_results: list[dict] = []
    previous_dir: Path | None = None
    for index, spec in enumerate(specs):
        stage_dir = out_dir / f"{index}_{spec.name}"
        finished = stage_dir / RESULTS
        if finished.is_file():
            check_same_config(stage_dir, spec.key, stage_identity(cfg, spec), stage_config_hash(cfg, spec))
            log.info("stage %s already finished (%s): skipping it", spec.name, finished)
            result = json.loads(finished.read_text())
        else:
            datasets = datasets or build_datasets(cfg)
            result = run_stage(cfg, spec, stage_dir, previous_dir, datasets)
        stage_results.append(result)
        previous_dir = stage_dir
    summary = chain_summary(cfg, stage_results)
    if rank_zero_only.rank == 0:
        _write_text(out_dir / RESULTS, json.dumps(summary, indent=2))
        print_results_table(summary, out_dir)
    return summary["final"]["metrics"].get("top1_last")


def run_stage(cfg: DictConfig, spec: StageSpec, stage_dir: Path, previous_dir: Path | None, datasets) -> dict:
    """Build data, module and trainer for one stage, train it (resuming if it was interrupted), export."""
    train, test = datasets
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    cost = build_cost_meter(cfg, spec)
    knn = build_knn_monitor(cfg, spec, train, test)
    identity = stage_identity(cfg, spec)
    resume = find_resume_point(stage_dir, spec, identity) if cfg.resume else None
    record = StageRecord(identity)
    callbacks = [cost, record, knn] if knn else [cost, record]
    trainer = build_trainer(cfg, spec, stage_dir, callbacks, resume)
    validate_world(spec, trainer.world_size)
    if spec.cfg.kind == "pretrain":
        method_class(cfg.method).check_run(cfg.method, spec, cfg.dataset.name, len(train), trainer.world_size)
    module = build_module(cfg, spec, len(train.classes), trainer.world_size)
    source = init_source(spec, previous_dir)
    init = initialise(module, spec, source)
    apply_layout(module, cfg.trainer)
    log.info("stage %s (%s, %s, %d px): init = %s", spec.name, spec.cfg.kind, spec.cfg.architecture,
             spec.cfg.resolution, init)
    try:
        datamodule = build_datamodule(cfg, spec, train, test)
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume.path) if resume else None)
        result = stage_result(cfg, spec, stage_dir, module, trainer, record.metrics(trainer), cost, datasets)
        result.update(init=init, init_from=None if source is None else str(source))
        for logger in trainer.loggers:
            logger.log_metrics({f"cost/{k}": v for k, v in result["cost"].items()}, step=trainer.global_step)
            logger.save()
    finally:
        finish_wandb()
    if trainer.is_global_zero:
        export_stage(cfg, spec, stage_dir, module, trainer)
        _write_text(stage_dir / "config.yaml", OmegaConf.to_yaml(spec.cfg, resolve=True))
        wait_for_checkpoints(trainer)  # the final last.ckpt, written in the background during the export
        _write_text(stage_dir / RESULTS, json.dumps(result, indent=2))  # written last: marks the stage done
    # Under DDP the other ranks would otherwise start the next stage, and read its init, before rank 0 wrote it.
    trainer.strategy.barrier("stage exported")
    return result


def export_stage(cfg: DictConfig, spec: StageSpec, stage_dir: Path, module, trainer: L.Trainer) -> None:
    """The checkpoint contract: backbone.pt + backbone.json (and the full method state for pretraining)."""
    meta = {
        "architecture": spec.cfg.architecture,
        "stem": cfg.architecture.stem,
        "resolution": spec.cfg.resolution,
        "stage": spec.name,
        "kind": spec.cfg.kind,
        "method": cfg.method.name if spec.cfg.kind == "pretrain" else "supervised",
        "dataset": cfg.dataset.name,
        "epochs": trainer.current_epoch,
        "config_hash": stage_config_hash(cfg, spec),
    }
    export_backbone(module.backbone, stage_dir, meta)
    if isinstance(module, SSLMethod):
        write_atomically(stage_dir / METHOD_STATE, lambda tmp: torch.save(module.state_dict(), tmp))


def stage_result(cfg, spec: StageSpec, stage_dir: Path, module, trainer, metrics: dict, cost, datasets) -> dict:
    """What one stage achieved and cost (over every attempt), with the paths of its artifacts."""
    if "knn/acc1" in metrics:
        metrics["knn_top1"] = metrics["knn/acc1"]
    if "knn/acc1_init" in metrics:
        metrics["knn_top1_init"] = metrics["knn/acc1_init"]
    if spec.cfg.kind != "pretrain":
        metrics.update(
            top1_last=module.last_acc1, top1_best=module.best_acc1, best_epoch=module.best_epoch,
            top5_last=metrics.get("val/acc5"),
        )
    train, test = datasets
    subset = getattr(train, "subset", None)
    return {
        "stage": spec.name,
        "kind": spec.cfg.kind,
        "architecture": spec.cfg.architecture,
        "resolution": spec.cfg.resolution,
        "epochs": trainer.current_epoch,
        "planned_epochs": stage_epochs(cfg, spec),
        "config_hash": stage_config_hash(cfg, spec),
        "config": stage_identity(cfg, spec),
        "metrics": metrics,
        "cost": cost.summary(),
        "skipped_images": {"train": len(train.skipped), "test": len(test.skipped)},
        "dataset": {"name": cfg.dataset.name, "subset": None if subset is None else subset.record()},
        "paths": {
            "stage_dir": str(stage_dir),
            "checkpoint": str(last_checkpoint(stage_dir)),
            "backbone": str(stage_dir / "backbone.pt"),
            "metrics_csv": str(stage_dir / "metrics.csv"),
        },
        "s3l_version": __version__,
    }


def chain_summary(cfg: DictConfig, stages: list[dict]) -> dict:
    """The run's results.json: every stage, plus the chain's totals (training time of every attempt)."""
    return {
        "name": cfg.name,
        "method": cfg.method.name,
        "architecture": cfg.architecture.name,
        "pretrain_resolution": cfg.resolution.size,
        "dataset": cfg.dataset.name,
        "chain": [s["stage"] for s in stages],
        "stages": stages,
        "final": final_stage(stages),
        "total_wall_clock_s": round(sum(s["cost"]["wall_clock_s"] for s in stages), 2),
        "config_hash": config_hash(cfg),
        "s3l_version": __version__,
    }


def final_stage(stages: list[dict]) -> dict:
    """The chain's outcome: its last stage that is not a from-scratch baseline run beside the chain."""
    lineage = [s for i, s in enumerate(stages) if i == 0 or s["init_from"] is not None]
    return lineage[-1]


@rank_zero_only
def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda tmp: tmp.write_text(text))
