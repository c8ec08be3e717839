"""Online weighted kNN monitor: how well the backbone's features separate the classes, during pretraining.

The classifier is the one of the MoCo CIFAR-10 demo (after Wu et al. 2018, InstDisc): L2-normalised
features, cosine similarity to every training feature, the k most similar vote for their class with
weight exp(similarity / T), and the class with the largest summed weight wins.
"""

from __future__ import annotations

import logging

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

log = logging.getLogger("s3l")


def weighted_knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    num_classes: int,
    k: int,
    temperature: float,
    chunk_size: int = 1024,
) -> Tensor:
    """Predicted label of each test feature by temperature-weighted kNN voting over the training features.

    `k` is clamped to the number of training features. Test features are handled `chunk_size` at a time,
    so the similarity matrix held in memory is at most chunk_size x len(train_features).
    """
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    train_labels = train_labels.to(train.device)
    k = min(k, train.shape[0])
    predictions = []
    for chunk in test.split(chunk_size):
        similarity, indices = (chunk @ train.T).topk(k, dim=1)
        weights = (similarity / temperature).exp()
        scores = torch.zeros(chunk.shape[0], num_classes, device=chunk.device)
        scores.scatter_add_(1, train_labels[indices], weights)
        predictions.append(scores.argmax(dim=1))
    return torch.cat(predictions)


@torch.no_grad()
def embed(backbone: nn.Module, loader: DataLoader, device: torch.device) -> tuple[Tensor, Tensor]:
    """Backbone features and labels of every (images, labels) batch of the loader, on `device`."""
    features, labels = [], []
    for images, targets in loader:
        features.append(backbone(images.to(device, non_blocking=True)).flatten(1).float())
        labels.append(targets.to(device))
    return torch.cat(features), torch.cat(labels)


class KNNMonitor(L.Callback):
    """Every `every_n_epochs` training epochs (and after the last one) logs `knn/acc1`: the weighted kNN
    top-1 on `test_loader` with `train_loader` as the feature bank, both embedded by `pl_module.backbone`.

    The loaders yield (images, labels) with the evaluation transform. Under DDP every rank embeds both
    loaders whole (they carry no DistributedSampler), so all ranks log the same number without any
    communication; the cost is redundant work, small next to pretraining for the datasets S3L targets.
    The module is put in eval mode for the embedding (BatchNorm with running statistics) and every
    submodule gets its previous mode back afterwards, so deliberately frozen parts stay frozen.
    """

    def __init__(
        self, train_loader: DataLoader, test_loader: DataLoader, every_n_epochs: int, k: int, temperature: float,
        at_start: bool = False,
    ) -> None:
        self.train_loader = train_loader
        self.test_loader = test_loader
        self.every_n_epochs = every_n_epochs
        self.k = k
        self.temperature = temperature
        self.at_start = at_start
        self.last_acc1: float | None = None
        self.history: list[tuple[int, float]] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """With `at_start`, the kNN top-1 of the initial weights (`knn/acc1_init`), what pretraining improves."""
        if not self.at_start or trainer.global_step > 0:  # a resumed stage measured it on its first attempt
            return
        acc1 = self.evaluate(trainer, pl_module)
        self.history.append((0, acc1))
        pl_module.log("knn/acc1_init", acc1)
        if trainer.is_global_zero:
            log.info("before training: kNN top-1 %.2f%% (k=%d, T=%g)", 100 * acc1, self.k, self.temperature)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1  # epochs completed
        if epoch % self.every_n_epochs and epoch != trainer.max_epochs:
            return
        acc1 = self.evaluate(trainer, pl_module)
        self.last_acc1 = acc1
        self.history.append((epoch, acc1))
        pl_module.log("knn/acc1", acc1)  # identical on every rank, so nothing to synchronise
        if trainer.is_global_zero:
            log.info("epoch %d: kNN top-1 %.2f%% (k=%d, T=%g)", epoch, 100 * acc1, self.k, self.temperature)

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float:
        """kNN top-1 (a fraction) of the current backbone."""
        modes = {module: module.training for module in pl_module.modules()}
        pl_module.eval()
        try:
            # The training precision (e.g. bf16 autocast) makes the embedding as cheap as a training forward.
            with trainer.precision_plugin.forward_context():
                train_features, train_labels = embed(pl_module.backbone, self.train_loader, pl_module.device)
                test_features, test_labels = embed(pl_module.backbone, self.test_loader, pl_module.device)
        finally:
            for module, training in modes.items():
                module.training = training
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
        predicted = weighted_knn_predict(
            train_features, train_labels, test_features, num_classes, self.k, self.temperature
        )
        return (predicted == test_labels).float().mean().item()
