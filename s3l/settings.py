"""The schema of every config group: which settings exist, their types and their ranges (s3l.schema).

Defaults live in the YAML only; a schema says what a value may be, never what it is. A setting without a
default here must be in the YAML; `= None` marks a setting that only some options of a group carry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from hydra.utils import get_method
from omegaconf import DictConfig

from s3l.data.views import Augmentation
from s3l.errors import S3LError
from s3l.methods.base import STAGE_SUPPLIED, method_class
from s3l.schema import (
    Architecture,
    LRSchedule,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Range,
    Stem,
    UnitFloat,
    check,
)
from s3l.stages.classify import FC_INITS, FREEZE_MODES

# Lightning's precision names (Trainer(precision=...)).
Precision = Literal["32-true", "32", 32, "16-mixed", "16", 16, "bf16-mixed", "bf16", "16-true", "bf16-true",
                    "64-true", "64", 64]
# limit_*_batches: a number of batches, or a fraction of them.
BatchLimit = PositiveInt | Annotated[float, Range(0, 1, low_inclusive=False)] | None


@dataclass
class ArchitectureSettings:
    name: Architecture
    full_name: Architecture
    stem: Stem


@dataclass
class ResolutionSettings:
    size: PositiveInt


@dataclass
class DatasetSettings:
    name: str
    root: str | None
    eval_resolution: PositiveInt
    bad_images: Literal["skip", "fail"]
    num_workers: NonNegativeInt
    cache: bool
    augment_on: Literal["workers", "device"]
    resident: bool
    resident_memory_fraction: Annotated[float, Range(0, 1, low_inclusive=False)]
    cache_dir: str | None = None  # file-backed datasets
    subset: str | None = None  # file-backed datasets: a subset.json (s3l.data.subset)
    image_size: PositiveInt | None = None  # the embedded digits


@dataclass
class OptimizationSettings:
    """The training recipe that every stage carries (a pretraining stage's defaults are its method's)."""

    epochs: PositiveInt
    batch_size: PositiveInt
    lr: PositiveFloat
    momentum: UnitFloat
    weight_decay: NonNegativeFloat
    lr_schedule: LRSchedule


@dataclass
class WarmupSettings:
    """A linear warm-up of the LR per step before the schedule (pretraining)."""

    warmup_epochs: NonNegativeInt
    warmup_start_lr: NonNegativeFloat


@dataclass
class RecipeSettings(OptimizationSettings, WarmupSettings):
    """What a method's YAML holds besides its class's own settings: its name and its training recipe."""

    name: str


@dataclass
class KNNSettings:
    every_n_epochs: NonNegativeInt
    k: PositiveInt
    temperature: PositiveFloat
    at_start: bool


@dataclass
class StageSettings(OptimizationSettings):
    """What every stage kind has."""

    kind: str
    init: str | None
    architecture: Architecture
    resolution: PositiveInt
    milestones: list[PositiveInt] | None


@dataclass
class PretrainSettings(StageSettings, WarmupSettings):
    knn: KNNSettings | None


@dataclass
class ClassifySettings(StageSettings):
    mixup_alpha: NonNegativeFloat
    freeze: Literal[FREEZE_MODES]  # type: ignore[valid-type]
    fc_init: Literal[FC_INITS]  # type: ignore[valid-type]
    bn_frozen: bool
    train_crop: Literal["random_crop", "random_resized_crop"]
    mean_per_class: bool


STAGE_SETTINGS = {"pretrain": PretrainSettings, "finetune": ClassifySettings, "warmup": ClassifySettings,
                  "linear": ClassifySettings}


@dataclass
class TrainerSettings:
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps", "tpu"]
    devices: PositiveInt | Literal["auto"] | list[NonNegativeInt]
    num_nodes: PositiveInt
    strategy: str
    precision: Precision
    max_epochs: PositiveInt | None
    limit_train_batches: BatchLimit
    limit_val_batches: BatchLimit
    log_every_n_steps: PositiveInt
    deterministic: bool
    benchmark: bool | None
    sync_batchnorm: bool
    channels_last: bool
    compile: bool
    check_finite_every_n_steps: PositiveInt


@dataclass
class CheckpointSettings:
    every_n_epochs: PositiveInt | None
    every_n_train_steps: PositiveInt | None
    every_n_minutes: PositiveFloat | None
    async_write: bool


@dataclass
class CallbackSettings:
    progress_bar: Literal["rich", "tqdm", "none"]
    checkpoint: CheckpointSettings


@dataclass
class WandbSettings:
    project: str
    entity: str | None
    mode: Literal["online", "offline", "disabled"] | None
    tags: list[str]


@dataclass
class LoggerSettings:
    wandb: WandbSettings | None


@dataclass
class PathSettings:
    root_dir: str
    log_dir: str
    output_dir: str


@dataclass
class RunSettings:
    """The top level of a composed config (the groups are checked by their own schemas)."""

    name: str
    seed: int
    resume: bool
    print_config: bool


GROUPS = {"architecture": ArchitectureSettings, "resolution": ResolutionSettings, "dataset": DatasetSettings,
          "augmentation": Augmentation, "trainer": TrainerSettings, "callbacks": CallbackSettings,
          "logger": LoggerSettings, "paths": PathSettings}
# Top-level keys that are not settings of the run itself (method and optimizer: checked against their classes).
STRUCTURE = ("chain", "stage", "stages", "method", "optimizer", *GROUPS)
HYDRA_KEYS = ("_target_", "_partial_")


def optimizer_function(optimizer: DictConfig):
    """The function that `optimizer._target_` names (one S3LError line if it cannot be imported)."""
    try:
        return get_method(str(optimizer.get("_target_")))
    except Exception as error:  # Hydra's locate raises ImportError, AttributeError, ValueError
        raise S3LError(f"optimizer._target_={optimizer.get('_target_')} cannot be imported ({error}): use "
                       "optimizer=sgd or optimizer=lars") from None


def check_settings(cfg: DictConfig, stage_keys: list[tuple[str, DictConfig]]) -> None:
    """Check the top level, every group and every stage of the chain against their schemas (one line each).

    The method's YAML is checked against its class's typed arguments (and the recipe), the optimizer's against
    its function's: a setting added to a method or an optimizer is checked by being declared there.
    """
    check(cfg, RunSettings, "", ignore=STRUCTURE)
    for group, schema in GROUPS.items():
        check(cfg[group], schema, group)
    cls = method_class(cfg.method)
    check(cfg.method, [RecipeSettings, cls], "method", ignore=HYDRA_KEYS, supplied=STAGE_SUPPLIED,
          what=f"method {cfg.method.name} ({cls.__module__}.{cls.__qualname__})")
    check(cfg.optimizer, optimizer_function(cfg.optimizer), "optimizer", ignore=HYDRA_KEYS,
          supplied=("groups", "lr", "momentum", "weight_decay"))
    for key, stage in stage_keys:
        kind = stage.get("kind")
        if kind not in STAGE_SETTINGS:
            raise S3LError(f"{key}.kind={kind} is not a stage kind; valid kinds: {', '.join(STAGE_SETTINGS)}")
        check(stage, STAGE_SETTINGS[kind], key)

