"""Stage kinds behind one small protocol.

A stage's YAML names its class with `_target_` (configs/stage/*.yaml), so a new kind of stage is a new class and
a new YAML, never a new branch in the chain: `s3l.run` validates every stage through `check_config` and
`check_handover` before any image is read, then calls `run` in the stage's own directory, which returns what
goes to that stage's results.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from s3l import __version__
from s3l.checkpoints import write_atomically
from s3l.config import StageSpec, stage_config_hash, stage_identity, target_class
from s3l.errors import S3LError
from s3l.models.resnet import full_architecture


class Stage:
    """One kind of stage of the chain, built from the composed config and the stage's spec."""

    # The schema of the stage's YAML (a dataclass of s3l.settings).
    Settings: ClassVar[type]
    # Whether the stage may be first with init=previous, i.e. start from random weights without being told.
    starts_from_nothing: ClassVar[bool] = False

    def __init__(self, cfg: DictConfig, spec: StageSpec) -> None:
        self.cfg, self.spec = cfg, spec

    def check_config(self) -> None:
        """Checks that need only the config (run for every stage before the chain starts); none by default."""

    def check_handover(self, previous: StageSpec) -> None:
        """This stage starts from `previous`'s weights: the same network, or the full one through a warm-up."""
        before, now, key = previous.cfg.architecture, self.spec.cfg.architecture, self.spec.key
        if now == before:
            return
        if now == full_architecture(before):
            raise S3LError(
                f"{key} ({now}) cannot start from {previous.key} ({before}, no conv5): add a warm-up stage "
                f"between them (chain=small_architecture) or set {key}.architecture={before}"
            )
        raise S3LError(
            f"{key}.architecture={now} cannot start from {previous.key}.architecture={before}: "
            "chained stages must use the same network"
        )

    def run(self, stage_dir: Path, previous_dir: Path | None, datasets: tuple) -> dict:
        """Do the stage's work in `stage_dir` and return its result (the content of its results.json)."""
        raise NotImplementedError

    def base_result(self, stage_dir: Path, datasets: tuple, epochs: int, planned_epochs: int) -> dict:
        """What every stage's result records: its settings, its data and where its artifacts are."""
        cfg, spec = self.cfg, self.spec
        train, test = datasets
        subset = getattr(train, "subset", None)
        return {
            "stage": spec.name,
            "kind": spec.cfg.kind,
            "architecture": spec.cfg.architecture,
            "resolution": spec.cfg.resolution,
            "epochs": epochs,
            "planned_epochs": planned_epochs,
            "config_hash": stage_config_hash(cfg, spec),
            "config": stage_identity(cfg, spec),
            "skipped_images": {"train": len(train.skipped), "test": len(test.skipped)},
            "dataset": {"name": cfg.dataset.name, "metric": cfg.dataset.metric,
                        "subset": None if subset is None else subset.record()},
            "paths": {"stage_dir": str(stage_dir)},
            "s3l_version": __version__,
        }


@rank_zero_only
def write_text(path: Path, text: str) -> None:
    """Write a run artifact atomically, from rank 0 only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda tmp: tmp.write_text(text))


def stage_class(stage: DictConfig, key: str) -> type[Stage]:
    """The class that a stage's `_target_` names (one S3LError line if it is not a Stage)."""
    return target_class(stage, key, Stage, "a Stage", "a Stage class, e.g. s3l.stages.supervised.ClassifyStage "
                        "(or pick a stage YAML: stage@stages.<name>=finetune)")


def build_stage(cfg: DictConfig, spec: StageSpec) -> Stage:
    """The stage object of one spec of the chain."""
    return stage_class(spec.cfg, spec.key)(cfg, spec)
