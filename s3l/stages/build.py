"""What the stage kinds share: their datasets, data modules, init weights, trainer and cost meter."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from omegaconf import DictConfig

from s3l.callbacks.checkpointing import (
    LastCheckpoint,
    NonFiniteLossGuard,
    PreemptionCheckpoint,
    RNGStateCheckpoint,
    checkpoint_io,
)
from s3l.callbacks.cost import CostMeter
from s3l.checkpoints import load_backbone, read_backbone_state
from s3l.config import StageSpec, stage_epochs
from s3l.data.cache import CachedImages, build_resized_cache, views_short_side
from s3l.data.datamodule import (
    ClassifyDataModule,
    StageDataModule,
    classify_train_transform,
    pretrain_transform,
)
from s3l.data.datasets import build_dataset
from s3l.data.resident import resident_classify_datamodule, resident_pretrain_datamodule
from s3l.data.sampling import stage_seed
from s3l.data.transforms import eval_transform
from s3l.data.views import view_specs
from s3l.errors import S3LError
from s3l.loggers import build_loggers
from s3l.models.resnet import backbone_flops, build_backbone, stem_for_resolutions, stem_of
from s3l.resume import ResumePoint, last_checkpoint

log = logging.getLogger("s3l")


def build_datasets(cfg: DictConfig) -> tuple:
    """Train and test splits of the configured dataset (images checked once, bad ones handled by policy)."""
    return build_dataset(cfg.dataset, "train"), build_dataset(cfg.dataset, "test")


def pretrain_datamodule(cfg: DictConfig, spec: StageSpec, train) -> L.LightningDataModule:
    """Two augmented views of every training image (upstream drop_last=True: a queue and split BatchNorm need
    whole batches); from the resized-image cache, resident on the device, or streamed from LitData shards, when
    the dataset asks for it."""
    s = spec.cfg
    if cfg.dataset.resident:
        return resident_pretrain_datamodule(cfg, spec, train)
    if cfg.dataset.get("format") == "litdata":
        from s3l.data.stream import stream_pretrain_datamodule  # LitData only where it is used (an extra)

        return stream_pretrain_datamodule(cfg, spec, train)
    views, fast = view_specs(cfg.augmentation), bool(cfg.dataset.cache)
    if fast:
        side = views_short_side(s.resolution, views)
        train = CachedImages(build_resized_cache(train, side, Path(cfg.dataset.cache_dir)))
    transform, collate = pretrain_transform(s.resolution, views, fast, cfg.dataset.augment_on)
    return StageDataModule(train, transform, s.batch_size, cfg.dataset.num_workers, drop_last=True,
                           collate_fn=collate, seed=stage_seed(cfg.seed, spec.name))


def classify_datamodule(cfg: DictConfig, spec: StageSpec, train, test) -> L.LightningDataModule:
    """Labelled training images with the stage's crop, and the test split for validation every epoch."""
    s = spec.cfg
    if cfg.dataset.resident:
        return resident_classify_datamodule(cfg, spec, train, test)
    return ClassifyDataModule(
        train, classify_train_transform(s.resolution, s.train_crop), s.batch_size, cfg.dataset.num_workers,
        test, eval_transform(s.resolution), seed=stage_seed(cfg.seed, spec.name),
    )


def init_source(spec: StageSpec, previous_dir: Path | None) -> Path | None:
    """Where this stage's weights come from: the previous stage's directory, a path, or nowhere."""
    if spec.cfg.init is None:
        return None
    if spec.cfg.init == "previous":
        if previous_dir is None:
            log.info("%s: init=previous but it is the first stage: random initialisation", spec.key)
        return previous_dir
    return Path(str(spec.cfg.init))


def backbone_file(source: Path) -> Path:
    """The weights file of an init source: a stage directory's backbone.pt, or the file itself."""
    return source / "backbone.pt" if source.is_dir() else source


def chain_stem(cfg: DictConfig, specs: list[StageSpec]) -> str:
    """The stem of the run's network: `architecture.stem`, or for `auto` the stem of the backbone file a stage
    starts from, else the one that suits every stage's resolution. A stem that contradicts that backbone's is
    refused here, before anything is read."""
    starts = {str(s.cfg.init): stem_of(read_backbone_state(backbone_file(Path(str(s.cfg.init))))[0])
              for s in specs if s.cfg.init not in (None, "previous")}
    chosen = cfg.architecture.stem
    for init, stem in starts.items():
        if chosen not in ("auto", stem):
            raise S3LError(
                f"architecture.stem={chosen} (from the experiment or the command line) but the backbone {init} has "
                f"the {stem} stem: pass architecture.stem=auto (it follows the backbone) or start from a backbone "
                f"with the {chosen} stem"
            )
    if chosen != "auto":
        return chosen
    if len(set(starts.values())) > 1:
        raise S3LError(f"the stages start from backbones with different stems ({starts}): give them one stem")
    if starts:
        return next(iter(starts.values()))
    return stem_for_resolutions([s.cfg.resolution for s in specs])


def load_init(backbone: torch.nn.Module, source: Path | None, allow_missing_prefixes: tuple[str, ...] = ()) -> str:
    """Load a stage directory's (or a file's) backbone weights, strictly but for the allowed missing prefixes;
    returns a one-line description for the logs and results."""
    if source is None:
        return "random"
    file = backbone_file(source)
    state, meta = read_backbone_state(file)
    load_backbone(backbone, state, source=str(file), meta=meta, allow_missing_prefixes=allow_missing_prefixes)
    return f"backbone from {file}"


def apply_layout(module: L.LightningModule, trainer_cfg: DictConfig) -> None:
    """channels_last weights and in-place torch.compile of every backbone (after the init weights loaded)."""
    if trainer_cfg.channels_last:
        module.to(memory_format=torch.channels_last)
    if trainer_cfg.compile:
        for sub in module.modules():
            if hasattr(sub, "feature_dim"):  # a backbone from s3l.models.resnet
                sub.compile()


def build_trainer(
    cfg: DictConfig, spec: StageSpec, stage_dir: Path, callbacks: list[L.Callback], resume: ResumePoint | None
) -> L.Trainer:
    t = cfg.trainer
    last = last_checkpoint(stage_dir)
    every = cfg.callbacks.checkpoint
    callbacks = [
        NonFiniteLossGuard(last, t.check_finite_every_n_steps), *callbacks, RNGStateCheckpoint(), PreemptionCheckpoint(last),
        LastCheckpoint(last, every.every_n_epochs, every.every_n_train_steps, every.every_n_minutes),  # last hook
    ]
    bar = cfg.callbacks.progress_bar
    if bar == "rich":
        callbacks.append(RichProgressBar())
    elif bar == "tqdm":
        callbacks.append(TQDMProgressBar())
    return L.Trainer(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
        precision=t.precision, max_epochs=stage_epochs(cfg, spec),
        limit_train_batches=t.limit_train_batches, limit_val_batches=t.limit_val_batches,
        log_every_n_steps=t.log_every_n_steps, deterministic=t.deterministic, benchmark=t.benchmark,
        sync_batchnorm=t.sync_batchnorm, num_sanity_val_steps=0, default_root_dir=stage_dir,
        logger=build_loggers(cfg, spec, stage_dir, resume), callbacks=callbacks,
        enable_progress_bar=bar != "none", enable_model_summary=False, enable_checkpointing=False,
        plugins=[checkpoint_io(every.async_write)],
    )


def forward_flops(cfg: DictConfig, spec: StageSpec) -> float:
    """Forward FLOPs of the stage's backbone for one image at the stage's resolution."""
    with torch.device("meta"):  # shapes only: no memory, no weight initialisation
        backbone = build_backbone(spec.cfg.architecture, cfg.architecture.stem)
    return backbone_flops(backbone, spec.cfg.resolution)


def build_cost_meter(cfg: DictConfig, spec: StageSpec, forward_cost: float) -> CostMeter:
    """Training FLOPs per input image, `forward_cost` backbone forward passes each (the stage kind's: e.g. MoCo
    query forward + backward 3, key forward 1; supervised 3; linear 1)."""
    forward = forward_flops(cfg, spec)
    return CostMeter(train_flops_per_image=forward_cost * forward, forward_gflops_per_image=forward / 1e9)
