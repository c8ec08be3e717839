"""The supervised stages: full fine-tuning, the conv5 warm-up and the linear probe (one `Classifier` each)."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from s3l.config import StageSpec
from s3l.errors import S3LError
from s3l.models.resnet import full_architecture
from s3l.settings import ClassifySettings
from s3l.stages.build import classify_datamodule, load_init
from s3l.stages.classify import Classifier
from s3l.stages.training import TrainingStage


class ClassifyStage(TrainingStage):
    """A backbone plus a linear classifier trained on the labels, validated on the test split every epoch with
    the dataset's metric (top-1, mean per-class accuracy or VOC mAP), reporting its last and best epoch."""

    Settings = ClassifySettings

    @property
    def forward_cost(self) -> float:
        return 1.0 if self.spec.cfg.freeze == "backbone" else 3.0  # a frozen backbone only runs forward

    def build_module(self, train, world_size: int) -> Classifier:
        s = self.spec.cfg
        return Classifier(
            architecture=s.architecture, stem=self.cfg.architecture.stem, num_classes=len(train.classes),
            freeze=s.freeze, fc_init=s.fc_init, bn_frozen=s.bn_frozen, mixup_alpha=s.mixup_alpha, lr=s.lr,
            momentum=s.momentum, weight_decay=s.weight_decay, lr_schedule=s.lr_schedule,
            milestones=None if s.milestones is None else list(s.milestones), metric=self.cfg.dataset.metric,
        )

    def build_datamodule(self, train, test) -> L.LightningDataModule:
        return classify_datamodule(self.cfg, self.spec, train, test)

    def metrics(self, module: Classifier, logged: dict) -> dict:
        logged.update(metric=module.metric_name, score_last=module.last_score, score_best=module.best_score,
                      best_epoch=module.best_epoch)
        if module.metric_name != "map":
            logged.update(top1_last=module.last_acc1, top1_best=module.best_acc1, top5_last=logged.get("val/acc5"))
        return logged


class WarmupStage(ClassifyStage):
    """The conv5 warm-up of the small architecture: the full network, conv1-4 from the network without conv5,
    layer4 freshly initialised and trained with fc only."""

    def initialise(self, module: Classifier, source: Path | None) -> str:
        return load_init(module.backbone, source, allow_missing_prefixes=("layer4.",))

    def check_handover(self, previous: StageSpec) -> None:
        before, now, key = previous.cfg.architecture, self.spec.cfg.architecture, self.spec.key
        if now != full_architecture(before):
            raise S3LError(
                f"{key}: the conv5 warm-up grows {before} into {full_architecture(before)}, "
                f"but {key}.architecture={now}; set it to {full_architecture(before)}"
            )
