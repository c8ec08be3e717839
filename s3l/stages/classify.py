"""The supervised stages: full fine-tuning, the conv5 warm-up and the linear probe, as one LightningModule.

They differ only in what is frozen, how fc starts, whether BN statistics move, and mixup
(upstream-s3l.md §2.2 `main.py` and §2.3 `main_freeze.py`):

| stage    | freeze     | fc_init | bn_frozen | mixup |
|----------|------------|---------|-----------|-------|
| finetune | `none`     | default | False     | yes   |
| warmup   | `conv1-4`  | normal  | False     | no    |
| linear   | `backbone` | normal  | True      | no    |

Validation runs on the test split every epoch, as upstream. `metric` names the dataset's headline score:
top-1 (`top1`), mean per-class accuracy (`mean_per_class`, Caltech-101) or VOC mAP (`map`, multi-label
targets). The last and the best epoch's score are kept, and for single-label metrics the last and best top-1.
"""

from collections.abc import Callable

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from s3l.errors import S3LError
from s3l.metrics import mean_class_recall, voc_map
from s3l.models.resnet import build_backbone
from s3l.optim import build_lr_schedule, build_sgd, schedule_length

FREEZE_MODES = ("none", "conv1-4", "backbone")
FC_INITS = ("default", "normal")
# Each metric's headline score, among the validation values.
SCORE_KEYS = {"top1": "val/acc1", "mean_per_class": "val/acc_per_class", "map": "val/map"}
METRICS = tuple(SCORE_KEYS)


def mixup_batch(
    x: Tensor, y: Tensor, alpha: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor, float]:
    """Mix each image with a random partner: `lam * x + (1 - lam) * x[perm]`, `lam ~ Beta(alpha, alpha)`.

    Returns `(x_mixed, y, y[perm], lam)`; `alpha <= 0` means no mixup (`lam = 1`, `x` unchanged).
    Upstream draws `lam` from numpy's global RNG; here numpy's Beta sampler is seeded from torch's RNG
    (or `generator`), so `seed_everything` makes the whole batch reproducible.
    """
    if alpha <= 0:
        return x, y, y, 1.0
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
    return lam * x + (1 - lam) * x[perm], y, y[perm], lam


def multilabel_bce(logits: Tensor, targets: Tensor) -> Tensor:
    """BCE-with-logits against `targets != 0`: difficult-only labels (-1) count as present, as upstream."""
    return F.binary_cross_entropy_with_logits(logits, (targets != 0).float())


def mixup_loss(
    logits: Tensor, y: Tensor, y_perm: Tensor, lam: float, criterion: Callable = F.cross_entropy
) -> Tensor:
    """`lam * criterion(logits, y) + (1 - lam) * criterion(logits, y_perm)`; plain criterion at `lam == 1`."""
    if lam == 1.0:
        return criterion(logits, y)
    return lam * criterion(logits, y) + (1 - lam) * criterion(logits, y_perm)


class MeanPerClassAccuracy(MulticlassConfusionMatrix):
    """The confusion matrix (torchmetrics: summed over processes) reduced to `s3l.metrics.mean_class_recall`, so
    validation and the evaluation stages share one definition (torchmetrics' macro accuracy would also average
    a class that is predicted but has no test image)."""

    def compute(self) -> Tensor:
        return torch.tensor(mean_class_recall(super().compute()))


class Classifier(L.LightningModule):
    """A ResNet backbone plus a linear classifier, trained with SGD on labels (the downstream stages).

    `freeze`: `none` trains everything; `conv1-4` trains only layer4 and fc (the conv5 warm-up);
    `backbone` trains only fc (the linear probe). `bn_frozen` keeps the backbone in eval mode so BN running
    statistics never move; frozen tensors are checked unchanged at the end of `fit`. With `metric="map"` the
    labels are int8 (N, C) vectors (1 present, 0 absent, -1 difficult-only) and the loss is per-class BCE.
    """

    def __init__(
        self,
        architecture: str,
        stem: str,
        num_classes: int,
        freeze: str,
        fc_init: str,
        bn_frozen: bool,
        mixup_alpha: float,
        lr: float,
        momentum: float,
        weight_decay: float,
        lr_schedule: str,
        milestones: list[int] | None,
        metric: str = "top1",
    ) -> None:
        super().__init__()
        if freeze not in FREEZE_MODES:
            raise S3LError(f"unknown freeze '{freeze}': use one of {', '.join(FREEZE_MODES)}")
        if fc_init not in FC_INITS:
            raise S3LError(f"unknown fc_init '{fc_init}': use one of {', '.join(FC_INITS)}")
        if metric not in METRICS:
            raise S3LError(f"unknown metric '{metric}': use one of {', '.join(METRICS)}")
        self.save_hyperparameters()
        self.backbone = build_backbone(architecture, stem)
        self.fc = nn.Linear(self.backbone.feature_dim, num_classes)
        if fc_init == "normal":
            # Upstream linear eval and warm-up; full fine-tuning keeps nn.Linear's default init.
            nn.init.normal_(self.fc.weight, mean=0.0, std=0.01)
            nn.init.zeros_(self.fc.bias)
        self._freeze(freeze)
        single_label = metric != "map"
        self.val_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro") if single_label else None
        top5 = min(5, num_classes)
        self.val_acc5 = MulticlassAccuracy(num_classes, top_k=top5, average="micro") if single_label else None
        self.val_acc_per_class = MeanPerClassAccuracy(num_classes) if metric == "mean_per_class" else None
        # Multi-label validation: each batch's logits and targets, for the epoch's mAP.
        self._val_scores: list[Tensor] = []
        self._val_targets: list[Tensor] = []
        self.metric_name = metric
        self.best_score, self.best_epoch, self.last_score = 0.0, -1, 0.0
        # Top-1 is undefined for multi-label targets.
        self.best_acc1, self.last_acc1 = (0.0, 0.0) if single_label else (None, None)
        self._frozen_reference: dict[str, Tensor] = {}
        self.train()

    def _freeze(self, freeze: str) -> None:
        for name, param in self.backbone.named_parameters():
            trains = freeze == "none" or (freeze == "conv1-4" and name.startswith("layer4."))
            param.requires_grad_(trains)
        if freeze == "conv1-4" and not any(p.requires_grad for p in self.backbone.parameters()):
            raise S3LError(
                f"freeze conv1-4 trains layer4, but {self.hparams.architecture} has no layer4: "
                "warm up the full architecture (e.g. resnet50 for custom_resnet50)"
            )

    def forward(self, images: Tensor) -> Tensor:
        return self.fc(self.backbone(images))

    def train(self, mode: bool = True) -> "Classifier":
        super().train(mode)
        if self.hparams.bn_frozen:
            self.backbone.eval()
        return self

    def on_train_epoch_start(self) -> None:
        # Lightning never calls train() itself (it saves and restores each submodule's `.training` flag),
        # so re-assert frozen BN in case anything flipped the flags directly.
        if self.hparams.bn_frozen:
            self.backbone.eval()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        mixed, labels, labels_perm, lam = mixup_batch(images, labels, self.hparams.mixup_alpha)
        logits = self(mixed)
        criterion = multilabel_bce if self.metric_name == "map" else F.cross_entropy
        loss = mixup_loss(logits, labels, labels_perm, lam, criterion)
        size = labels.shape[0]
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=size)
        if self.metric_name != "map":
            # Against the unmixed labels, as upstream.
            acc1 = (logits.argmax(dim=1) == labels).float().mean()
            self.log("train/acc1", acc1, on_step=False, on_epoch=True, batch_size=size)
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False, batch_size=size)
        return loss

    def _val_metrics(self) -> dict[str, Metric]:
        metrics = {
            "val/acc1": self.val_acc1,
            "val/acc5": self.val_acc5,
            "val/acc_per_class": self.val_acc_per_class,
        }
        return {name: metric for name, metric in metrics.items() if metric is not None}

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self(images)
        if self.metric_name == "map":
            self._val_scores.append(logits.detach())
            self._val_targets.append(labels)
        for metric in self._val_metrics().values():
            metric.update(logits, labels)

    def on_validation_epoch_end(self) -> None:
        # compute() syncs across processes; fractions in [0, 1].
        values = {name: float(metric.compute()) for name, metric in self._val_metrics().items()}
        for metric in self._val_metrics().values():
            metric.reset()
        if self.metric_name == "map":
            values.update(self._map_values())
        if self.trainer.sanity_checking:
            return
        self.track(values, self.current_epoch)
        tracked = {"val/score": self.last_score, "val/score_best": self.best_score}
        if self.best_acc1 is not None:
            tracked["val/acc1_best"] = self.best_acc1
        self.log_dict({**values, **tracked})

    def _map_values(self) -> dict[str, float]:
        """The epoch's area and 11-point VOC mAP over all processes' collected scores; empties the lists."""
        scores, targets = torch.cat(self._val_scores), torch.cat(self._val_targets)
        self._val_scores, self._val_targets = [], []
        if self.trainer.world_size > 1:
            scores, targets = self.all_gather(scores).flatten(0, 1), self.all_gather(targets).flatten(0, 1)
        return {"val/map": voc_map(scores, targets, "area"), "val/map11": voc_map(scores, targets, "11point")}

    def track(self, values: dict[str, float], epoch: int) -> None:
        """Record an epoch's headline score (and top-1 if in `values`) as the last, and the best if best."""
        self.last_score = values[SCORE_KEYS[self.metric_name]]
        if self.best_epoch < 0 or self.last_score > self.best_score:
            self.best_score, self.best_epoch = self.last_score, epoch
        if "val/acc1" in values:
            self.last_acc1 = values["val/acc1"]
            self.best_acc1 = max(self.best_acc1, self.last_acc1)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["best_acc1"], checkpoint["best_epoch"] = self.best_acc1, self.best_epoch
        checkpoint["last_acc1"] = self.last_acc1
        checkpoint["best_score"], checkpoint["last_score"] = self.best_score, self.last_score

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.best_acc1 = checkpoint.get("best_acc1", self.best_acc1)
        self.best_epoch = checkpoint.get("best_epoch", self.best_epoch)
        self.last_acc1 = checkpoint.get("last_acc1", self.last_acc1)
        self.best_score = checkpoint.get("best_score", self.best_score)
        self.last_score = checkpoint.get("last_score", self.last_score)

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        optimizer = build_sgd(self.parameters(), hp.lr, hp.momentum, hp.weight_decay)
        epochs, steps_per_epoch = schedule_length(self.trainer)
        schedule = build_lr_schedule(optimizer, hp.lr_schedule, epochs, steps_per_epoch, hp.milestones)
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    def frozen_tensors(self) -> dict[str, Tensor]:
        """Copies of the backbone tensors training must not change: frozen params, and BN buffers if bn_frozen."""
        frozen = {name: p for name, p in self.backbone.named_parameters() if not p.requires_grad}
        if self.hparams.bn_frozen:
            frozen.update(self.backbone.named_buffers())
        return {name: tensor.detach().clone() for name, tensor in frozen.items()}

    def check_frozen_unchanged(self, reference: dict[str, Tensor]) -> None:
        """Raise RuntimeError naming the first frozen tensor that differs from `reference` (upstream lincls check)."""
        current = self.frozen_tensors()
        for name, before in reference.items():
            if not torch.equal(current[name], before):
                raise RuntimeError(f"frozen backbone tensor {name} changed during training")

    def on_fit_start(self) -> None:
        self._frozen_reference = self.frozen_tensors()

    def on_fit_end(self) -> None:
        self.check_frozen_unchanged(self._frozen_reference)
        self._frozen_reference = {}
