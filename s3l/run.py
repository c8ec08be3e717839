"""The chain: run each configured stage in its own directory, hand its exported weights to the next,
skip stages that already finished, and summarise everything in results.json and a printed table."""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from s3l import __version__
from s3l.config import HydraTask, StageSpec, config_hash, stage_config_hash, stage_identity, stage_specs
from s3l.errors import S3LError
from s3l.quiet import silence_dependency_noise
from s3l.report import print_config_tree, print_results_table
from s3l.rundir import check_same_config, claim, keep_ddp_ranks_in_this_sweep
from s3l.stages.base import build_stage, write_text
from s3l.stages.build import build_datasets
from s3l.stages.training import RESULTS
from s3l.validate import validate_config

log = logging.getLogger("s3l")


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
    write_text(out_dir / "config_resolved.yaml", OmegaConf.to_yaml(cfg, resolve=True))
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
            result = build_stage(cfg, spec).run(stage_dir, previous_dir, datasets)
        stage_results.append(result)
        previous_dir = stage_dir
    summary = chain_summary(cfg, stage_results)
    if rank_zero_only.rank == 0:
        write_text(out_dir / RESULTS, json.dumps(summary, indent=2))
        print_results_table(summary, out_dir)
    return summary["final"]["metrics"].get("top1_last")


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
