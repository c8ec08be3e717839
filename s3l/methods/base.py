"""What every SSL pretraining method shares: `SSLMethod`, the base of MoCo v2, SimCLR, BYOL and SimSiam.

- the encoders: a backbone of the stage's architecture with a head, BatchNorm split into `bn_splits` groups per
  device (the per-GPU statistics of the upstream's 4 GPUs on one device), and `encode_views`, which forwards
  several views in one pass with each BatchNorm group holding all views of its images, as one upstream GPU did;
- the optimizer (the `optimizer` config group, SGD or LARS) and the LR schedule of the stage (s3l.optim);
- the export: `backbone` is the online backbone the next stage receives;
- the cost: `forward_cost`, backbone forward-pass equivalents per source image per step (a backward pass
  counts two), for the cost meter;
- the checks a method needs before any data is read (`check_config`) and before training (`check_run`);
- what it hands to a following pretraining stage (its whole state, `load_method_state`) and how target
  networks follow a backbone-only init (`momentum_pairs`).

A method is a subclass with its own typed keyword arguments, built by `hydra.utils.instantiate` from
`configs/method/<name>.yaml` (`build_method`); s3l.settings checks that YAML against those types.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from s3l.config import StageSpec, target_class
from s3l.errors import S3LError
from s3l.methods.momentum import frozen_copy_of
from s3l.models.batchnorm import convert_to_split_batchnorm
from s3l.models.resnet import build_backbone
from s3l.optim import ParameterGroup, build_lr_schedule, schedule_length, sgd, trainable_groups
from s3l.schema import (
    Architecture,
    LRSchedule,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Stem,
    UnitFloat,
    settings_of,
)

# What a pretraining stage passes to every method (its architecture, stem, optimizer and schedule); the
# method's YAML holds the recipe defaults for these, which the stage may override.
STAGE_SUPPLIED = ("architecture", "stem", "lr", "momentum", "weight_decay", "lr_schedule", "milestones",
                  "warmup_epochs", "warmup_start_lr", "optimizer")


class Encoder(nn.Module):
    """A backbone followed by a head (upstream: a ResNet whose fc is the head)."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


class SSLMethod(L.LightningModule):
    """A self-supervised pretraining method: subclasses build their networks and define `training_step`."""

    forward_cost: ClassVar[float]

    def __init__(
        self,
        *,
        architecture: Architecture,
        stem: Stem,
        bn_splits: PositiveInt,
        lr: PositiveFloat,
        momentum: UnitFloat,
        weight_decay: NonNegativeFloat,
        lr_schedule: LRSchedule,
        milestones: list[PositiveInt] | None = None,
        warmup_epochs: NonNegativeInt = 0,
        warmup_start_lr: NonNegativeFloat = 0.0,
        optimizer: dict | None = None,
    ) -> None:
        """`bn_splits` counts BatchNorm groups per device; `optimizer` is the `optimizer` config group as a
        dict (None: SGD over every parameter, the upstream optimizer)."""
        super().__init__()
        self.save_hyperparameters()

    # -- networks ---------------------------------------------------------------------------------------
    @property
    def backbone(self) -> nn.Module:
        """The online backbone: what the next stage receives (and the kNN monitor embeds with)."""
        raise NotImplementedError

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, target) modules whose target follows the online one by EMA; none by default."""
        return []

    def make_encoder(self, head: Callable[[int], nn.Module]) -> Encoder:
        """A backbone of the stage's architecture with `head(feature_dim)`, BatchNorm split per device."""
        backbone = build_backbone(self.hparams.architecture, self.hparams.stem)
        encoder = Encoder(backbone, head(backbone.feature_dim))
        return convert_to_split_batchnorm(encoder, self.hparams.bn_splits)

    def encode_views(self, encoder: nn.Module, views: list[Tensor]) -> list[Tensor]:
        """`encoder` applied to every view in one forward pass, each BatchNorm group seeing all views of its
        images (upstream: each GPU concatenated both views of its share of the batch)."""
        splits, count, n = self.hparams.bn_splits, len(views), views[0].shape[0]
        shape = views[0].shape[1:]
        grouped = torch.stack([v.reshape(splits, n // splits, *shape) for v in views], dim=1)
        out = encoder(grouped.reshape(count * n, *shape))
        return list(out.reshape(splits, count, n // splits, -1).transpose(0, 1).reshape(count, n, -1))

    # -- optimisation -----------------------------------------------------------------------------------
    def parameter_groups(self) -> list[ParameterGroup]:
        """The optimizer's parameter groups: every trainable parameter (methods may pin some groups' LR)."""
        return trainable_groups(self)

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        groups = self.parameter_groups()
        settings = {"lr": hp.lr, "momentum": hp.momentum, "weight_decay": hp.weight_decay}
        if hp.optimizer is None:
            optimizer = sgd(groups, **settings, exclude_bn_and_bias=False)
        else:
            optimizer = instantiate(hp.optimizer, _partial_=True)(groups, **settings)
        epochs, steps = schedule_length(self.trainer)
        schedule = build_lr_schedule(optimizer, hp.lr_schedule, epochs, steps, hp.milestones, hp.warmup_epochs,
                                     hp.warmup_start_lr)
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    # -- checks -----------------------------------------------------------------------------------------
    @classmethod
    def check_config(cls, method: DictConfig, spec: StageSpec) -> None:
        """Checks of the method's settings against the stage's that need no data (raise S3LError)."""
        batch, splits = spec.cfg.batch_size, method.bn_splits
        if batch % splits:
            raise S3LError(
                f"{spec.key}.batch_size={batch} is not divisible by method.bn_splits={splits} "
                "(split BatchNorm needs equal groups); change one of them"
            )

    @classmethod
    def check_run(cls, method: DictConfig, spec: StageSpec, dataset: str, train_images: int,
                  world_size: int) -> None:
        """Checks that need the training split's size and the number of processes (raise S3LError)."""
        batch = spec.cfg.batch_size
        if batch > train_images:
            raise S3LError(
                f"{spec.key}.batch_size={batch} is larger than dataset {dataset}'s {train_images} training images: "
                f"pretraining drops the incomplete last batch, so no step would be taken; use a batch <= {train_images}"
            )
        if method.bn_splits % world_size:
            raise S3LError(
                f"method.bn_splits={method.bn_splits} (BatchNorm groups per global batch) is not divisible by "
                f"the {world_size} devices; use a multiple of {world_size} (e.g. method.bn_splits={world_size})"
            )

    # -- hand-over --------------------------------------------------------------------------------------
    def load_method_state(self, file: Path) -> str:
        """Multi-stage pretraining: inherit the whole method state (encoders, heads, targets, queue) from a
        previous stage, strictly (upstream --pretrained); returns a line for the logs."""
        state = torch.load(file, map_location="cpu", weights_only=True)
        expected = self.state_dict()
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                      if k in state and state[k].shape != v.shape]
        problems = [f"{len(keys)} {label} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
                    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                        ("shape mismatches", mismatched)) if keys]
        if problems:
            raise S3LError(
                f"{file} does not fit this {type(self).__name__} configuration: {', '.join(problems)}; the method, "
                "the architecture and the method's sizes (e.g. method.dim, method.K) must match the previous stage"
            )
        self.load_state_dict(state)
        return f"full {type(self).__name__} state from {file}"

    def sync_targets(self) -> None:
        """After a backbone-only init: every target network starts as a copy of its online network."""
        for online, target in self.momentum_pairs():
            frozen_copy_of(online, target)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Where the exported backbone sits in the state dict, so s3l.checkpoints can read any method's .ckpt.
        name = next(name for name, module in self.named_modules() if module is self.backbone)
        checkpoint["backbone_prefix"] = f"{name}."

    def log_training(self, loss: Tensor, **metrics: Tensor) -> None:
        """The step's loss (and method-specific metrics) under train/, averaged over processes."""
        self.log("train/loss", loss, prog_bar=True, sync_dist=True)
        for name, value in metrics.items():
            self.log(f"train/{name}", value, sync_dist=True)


def method_class(method: DictConfig) -> type[SSLMethod]:
    """The class that `method._target_` names (one S3LError line if it is not an SSLMethod)."""
    return target_class(method, "method", SSLMethod, "an SSLMethod",
                        "an SSLMethod class, e.g. s3l.methods.mocov2.MoCoV2")


def build_method(method: DictConfig, stage: DictConfig, stem: str, optimizer: DictConfig,
                 world_size: int) -> SSLMethod:
    """The method of `method` (its YAML) for one pretraining stage (its architecture and recipe)."""
    cls = method_class(method)
    own = {k: method[k] for k in method if k == "_target_" or k in settings_of(cls)}
    stage_values = {k: stage[k] for k in STAGE_SUPPLIED if k in stage}
    return instantiate(
        OmegaConf.create(own), _recursive_=False, _convert_="all", **stage_values, stem=stem,
        bn_splits=method.bn_splits // world_size,  # the YAML counts groups per global batch
        optimizer=OmegaConf.to_container(optimizer, resolve=True),
    )
