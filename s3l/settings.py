"""The schema of every config group: which settings exist, their types and their ranges (s3l.schema).

Defaults live in the YAML only; a schema says what a value may be, never what it is. A setting without a
default here must be in the YAML; `= None` marks a setting that only some options of a group carry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from hydra.utils import get_method
from omegaconf import DictConfig

from s3l.data.datasets import DATA_FORMATS, dataset_class
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
    StemChoice,
    UnitFloat,
    check,
)
from s3l.stages.base import stage_class
from s3l.stages.classify import FC_INITS, FREEZE_MODES, METRICS

# Lightning's precision names (Trainer(precision=...)).
Precision = Literal["32-true", "32", 32, "16-mixed", "16", 16, "bf16-mixed", "bf16", "16-true", "bf16-true",
                    "64-true", "64", 64]
TrainCrop = Literal["random_crop", "random_resized_crop"]
# limit_*_batches: a number of batches, or a fraction of them.
BatchLimit = PositiveInt | Annotated[float, Range(0, 1, low_inclusive=False)] | None


@dataclass
class ArchitectureSettings:
    name: Architecture
    full_name: Architecture
    stem: StemChoice


@dataclass
class ResolutionSettings:
    size: PositiveInt


@dataclass
class ProtocolSettings:
    """One evaluation protocol of a dataset (the upstream classification_benchmark script's settings)."""

    lr: PositiveFloat
    epochs: PositiveInt
    lr_schedule: LRSchedule
    milestones: list[PositiveInt] | None
    weight_decay: NonNegativeFloat
    train_crop: TrainCrop
    bn_frozen: bool


@dataclass
class DatasetProtocols:
    finetune: ProtocolSettings
    linear: ProtocolSettings


@dataclass
class StreamSettings:
    """LitData streaming shards (dataset.format=litdata, s3l.data.stream)."""

    dir: str
    storage: Literal["jpeg", "raw"]
    quality: Annotated[int, Range(1, 100)]
    build_workers: PositiveInt
    chunk_bytes: str
    max_cache_size: str


@dataclass
class DatasetSettings:
    """What every dataset YAML holds besides its class's own settings (root, bad_images, subset, ...)."""

    name: str
    num_classes: PositiveInt | None  # the full dataset's classes (a partial copy has fewer: the classes found count)
    metric: Literal[METRICS]  # type: ignore[valid-type]
    protocol: DatasetProtocols
    eval_resolution: PositiveInt
    num_workers: NonNegativeInt
    cache: bool
    augment_on: Literal["workers", "device"]
    resident: bool
    resident_memory_fraction: Annotated[float, Range(0, 1, low_inclusive=False)]
    cache_dir: str | None = None  # datasets the resized-image cache can serve
    format: Literal[DATA_FORMATS] | None = None  # type: ignore[valid-type]  # datasets read from image files
    stream: StreamSettings | None = None


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
    train_crop: TrainCrop


@dataclass
class EvaluationSettings:
    """What every evaluation stage has: the backbone it reads and how it embeds the images."""

    kind: str
    init: str | None
    architecture: Architecture
    resolution: PositiveInt
    batch_size: PositiveInt


@dataclass
class HeadSettings:
    """Linear classifiers trained on cached features (SGD, cosine LR)."""

    epochs: PositiveInt
    lr: PositiveFloat
    weight_decay: NonNegativeFloat


@dataclass
class ProbeSettings(EvaluationSettings, HeadSettings):
    stages: list[Literal["conv2", "conv3", "conv4", "conv5"]] | None
    head_batch_size: PositiveInt


@dataclass
class KShotSettings(EvaluationSettings, HeadSettings):
    shots: list[PositiveInt]
    seeds: list[NonNegativeInt]
    classifier: Literal["linear", "knn"]


@dataclass
class KNNStageSettings(EvaluationSettings):
    k: PositiveInt
    temperature: PositiveFloat


@dataclass
class FeaturesSettings(EvaluationSettings):
    embedding: Literal["tsne", "umap", "none"]  # not `map`: that is VOC's metric
    max_points: PositiveInt


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
    datasets: dict[str, str | None]


@dataclass
class RunSettings:
    """The top level of a composed config (the groups are checked by their own schemas)."""

    name: str
    seed: int
    resume: bool
    print_config: bool
    backbone: str | None = None  # the transfer experiments: the backbone their stages start from
    subset: str | None = None  # the small-ImageNet experiments: the subset.json their dataset.subset reads


GROUPS = {"architecture": ArchitectureSettings, "resolution": ResolutionSettings, "augmentation": Augmentation,
          "trainer": TrainerSettings, "callbacks": CallbackSettings,
          "logger": LoggerSettings, "paths": PathSettings}
# Top-level keys that are not settings of the run itself (method and optimizer: checked against their classes).
STRUCTURE = ("chain", "stage", "stages", "method", "optimizer", "dataset", *GROUPS)
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

    The method's and the dataset's YAML are checked against their class's typed arguments (and what every
    method or dataset has), the optimizer's against its function's, a stage's against its class's `Settings`:
    a setting added to one of them is checked by being declared there.
    """
    check(cfg, RunSettings, "", ignore=STRUCTURE)
    for group, schema in GROUPS.items():
        check(cfg[group], schema, group)
    cls = method_class(cfg.method)
    check(cfg.method, [RecipeSettings, cls], "method", ignore=HYDRA_KEYS, supplied=STAGE_SUPPLIED,
          what=f"method {cfg.method.name} ({cls.__module__}.{cls.__qualname__})")
    check(cfg.optimizer, optimizer_function(cfg.optimizer), "optimizer", ignore=HYDRA_KEYS,
          supplied=("groups", "lr", "momentum", "weight_decay"))
    dataset = dataset_class(cfg.dataset)
    check(cfg.dataset, [DatasetSettings, dataset], "dataset", ignore=HYDRA_KEYS, supplied=("split",),
          what=f"dataset {cfg.dataset.name} ({dataset.__module__}.{dataset.__qualname__})")
    for key, stage in stage_keys:
        check(stage, stage_class(stage, key).Settings, key, ignore=HYDRA_KEYS)

