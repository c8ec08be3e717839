"""From one stage's config to the objects Lightning runs: data, module (with its init), trainer."""

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
from s3l.callbacks.knn import KNNMonitor
from s3l.checkpoints import load_backbone, read_backbone_state
from s3l.config import StageSpec, stage_epochs
from s3l.data.cache import CachedImages, build_resized_cache, cache_short_side
from s3l.data.datamodule import (
    ClassifyDataModule,
    StageDataModule,
    Transformed,
    classify_train_transform,
    loader,
    pretrain_transform,
)
from s3l.data.datasets import build_dataset
from s3l.data.resident import build_resident_datamodule
from s3l.data.sampling import stage_seed
from s3l.data.transforms import eval_transform
from s3l.data.views import smallest_min_scale, view_specs
from s3l.loggers import build_loggers
from s3l.methods.base import SSLMethod, build_method, method_class
from s3l.models.resnet import backbone_flops, build_backbone
from s3l.resume import ResumePoint, last_checkpoint
from s3l.stages.classify import Classifier

log = logging.getLogger("s3l")

METHOD_STATE = "method_state.pt"


def build_datasets(cfg: DictConfig) -> tuple:
    """Train and test splits of the configured dataset (images checked once, bad ones handled by policy)."""
    d = cfg.dataset
    train = build_dataset(d.name, d.root, "train", d.bad_images, d.get("image_size"), d.get("subset"))
    test = build_dataset(d.name, d.root, "test", d.bad_images, d.get("image_size"), d.get("subset"))
    return train, test


def build_datamodule(cfg: DictConfig, spec: StageSpec, train, test) -> L.LightningDataModule:
    if cfg.dataset.resident:
        return build_resident_datamodule(cfg, spec, train, test)
    s = spec.cfg
    if s.kind == "pretrain":
        views, fast = view_specs(cfg.augmentation), bool(cfg.dataset.cache)
        if fast:
            side = cache_short_side(s.resolution, smallest_min_scale(views))
            train = CachedImages(build_resized_cache(train, side, Path(cfg.dataset.cache_dir)))
        transform, collate = pretrain_transform(s.resolution, views, fast, cfg.dataset.augment_on)
        return StageDataModule(
            train, transform, s.batch_size, cfg.dataset.num_workers,
            drop_last=True,  # upstream: drop_last=True (a queue and split BatchNorm need whole batches)
            collate_fn=collate, seed=stage_seed(cfg.seed, spec.name),
        )
    return ClassifyDataModule(
        train, classify_train_transform(s.resolution, s.train_crop), s.batch_size, cfg.dataset.num_workers,
        test, eval_transform(s.resolution), seed=stage_seed(cfg.seed, spec.name),
    )


def build_module(cfg: DictConfig, spec: StageSpec, num_classes: int, world_size: int) -> L.LightningModule:
    """The stage's LightningModule: the configured SSL method for pretraining, else the Classifier."""
    s, stem = spec.cfg, cfg.architecture.stem
    if s.kind == "pretrain":
        return build_method(cfg.method, s, stem, cfg.optimizer, world_size)
    return Classifier(
        architecture=s.architecture, stem=stem, num_classes=num_classes, freeze=s.freeze, fc_init=s.fc_init,
        bn_frozen=s.bn_frozen, mixup_alpha=s.mixup_alpha, lr=s.lr, momentum=s.momentum,
        weight_decay=s.weight_decay, lr_schedule=s.lr_schedule, milestones=_list(s.milestones),
        mean_per_class=s.mean_per_class,
    )


def _list(value) -> list | None:
    return None if value is None else list(value)


def init_source(spec: StageSpec, previous_dir: Path | None) -> Path | None:
    """Where this stage's weights come from: the previous stage's directory, a path, or nowhere."""
    if spec.cfg.init is None:
        return None
    if spec.cfg.init == "previous":
        if previous_dir is None:
            log.info("%s: init=previous but it is the first stage: random initialisation", spec.key)
        return previous_dir
    return Path(str(spec.cfg.init))


def initialise(module: L.LightningModule, spec: StageSpec, source: Path | None) -> str:
    """Load the init weights into the module; returns a one-line description for the logs and results."""
    if source is None:
        return "random"
    if isinstance(module, SSLMethod) and source.is_dir() and (source / METHOD_STATE).is_file():
        return module.load_method_state(source / METHOD_STATE)
    file = source / "backbone.pt" if source.is_dir() else source
    state, meta = read_backbone_state(file)
    # The conv5 warm-up grows a network without conv5 into the full one: a missing layer4 starts fresh.
    allow = ("layer4.",) if spec.cfg.kind == "warmup" else ()
    load_backbone(module.backbone, state, source=str(file), meta=meta, allow_missing_prefixes=allow)
    if isinstance(module, SSLMethod):
        module.sync_targets()
    return f"backbone from {file}"


def build_knn_monitor(cfg: DictConfig, spec: StageSpec, train, test) -> KNNMonitor | None:
    """The online kNN monitor of a pretraining stage (None when off or not pretraining)."""
    knn = spec.cfg.get("knn")
    if spec.cfg.kind != "pretrain" or not knn or knn.every_n_epochs <= 0:
        return None
    transform = eval_transform(spec.cfg.resolution)
    loaders = [loader(Transformed(split, transform), spec.cfg.batch_size, cfg.dataset.num_workers)
               for split in (train, test)]
    return KNNMonitor(*loaders, every_n_epochs=knn.every_n_epochs, k=knn.k, temperature=knn.temperature,
                      at_start=knn.at_start)


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


def build_cost_meter(cfg: DictConfig, spec: StageSpec) -> CostMeter:
    """Training FLOPs per input image in backbone forward passes: the method's `forward_cost` for pretraining
    (e.g. MoCo: query forward + backward 3, key forward 1), 3 supervised (forward + backward), 1 linear."""
    with torch.device("meta"):  # shapes only: no memory, no weight initialisation
        backbone = build_backbone(spec.cfg.architecture, cfg.architecture.stem)
    forward = backbone_flops(backbone, spec.cfg.resolution)
    kind = spec.cfg.kind
    factor = method_class(cfg.method).forward_cost if kind == "pretrain" else {"linear": 1.0}.get(kind, 3.0)
    return CostMeter(train_flops_per_image=factor * forward, forward_gflops_per_image=forward / 1e9)
