"""Downstream evaluation metrics as pure functions on whole-test-set tensors.

Mean per-class accuracy is the upstream Caltech-101 metric; VOC average precision is the PASCAL VOC
multi-label classification metric, with targets 1 = present, 0 = absent, -1 = difficult-only (ignored).
"""

import torch
from torch import Tensor

from s3l.errors import S3LError

AP_MODES = ("area", "11point")


def confusion_matrix(predictions: Tensor, targets: Tensor, num_classes: int) -> Tensor:
    """Counts (num_classes, num_classes): row = true class, column = predicted class."""
    cells = targets.long() * num_classes + predictions.long()
    return torch.bincount(cells, minlength=num_classes**2).reshape(num_classes, num_classes)


def mean_class_recall(confusion: Tensor) -> float:
    """Mean over the classes with test images (rows with counts) of each class's recall (diagonal / row sum)."""
    support = confusion.sum(dim=1)
    present = support > 0
    return float((confusion.diagonal()[present] / support[present]).mean())


def mean_per_class_accuracy(predictions: Tensor, targets: Tensor, num_classes: int) -> float:
    """The upstream Caltech-101 metric: `mean_class_recall` of the confusion matrix of class indices (N,)."""
    return mean_class_recall(confusion_matrix(predictions, targets, num_classes))


def accuracies(predictions: Tensor, targets: Tensor, num_classes: int) -> dict[str, float]:
    """Top-1 and mean per-class accuracy of class-index predictions, as fractions (keyed by metric name)."""
    return {"top1": float((predictions == targets).float().mean()),
            "mean_per_class": mean_per_class_accuracy(predictions, targets, num_classes)}


def voc_ap(scores: Tensor, targets: Tensor, mode: str) -> Tensor:
    """Per-class VOC average precision of `scores` (N, C) against `targets` (N, C).

    `mode` "area" is VOC2010+'s all-point AP (area under the precision envelope), "11point" is VOC2007's
    mean over recall thresholds 0, 0.1, ..., 1 of the best precision at recall >= threshold. A -1 target
    removes that sample from that class's ranking; a class without positives gets NaN.
    """
    # Not torchmetrics: its MultilabelAveragePrecision sums (R_n - R_n-1) * P_n over the raw precision-recall
    # curve (the non-interpolated step AP, like sklearn), not VOC's interpolated envelope or 11-point mean.
    if mode not in AP_MODES:
        raise S3LError(f"unknown VOC AP mode '{mode}': use one of {', '.join(AP_MODES)}")
    return torch.stack([_class_ap(scores[:, c], targets[:, c], mode) for c in range(scores.shape[1])])


def _class_ap(scores: Tensor, targets: Tensor, mode: str) -> Tensor:
    """One class's VOC AP over its non-difficult samples, ranked by descending score."""
    kept = targets != -1
    positive = targets[kept] == 1
    n_positive = int(positive.sum())
    if n_positive == 0:
        return torch.tensor(float("nan"), dtype=torch.float64, device=scores.device)
    order = torch.argsort(scores[kept].double(), descending=True, stable=True)
    true_positives = positive[order].double().cumsum(0)  # whole numbers, exact in float64
    ranks = torch.arange(1, len(order) + 1, dtype=torch.float64, device=scores.device)
    precision = true_positives / ranks
    if mode == "11point":
        # recall >= t / 10 compared as whole numbers, so recall 0.3 meets threshold 0.3 exactly.
        tenths = torch.arange(11, device=scores.device)
        reached = 10 * true_positives[None, :] >= tenths[:, None] * n_positive
        return (precision[None, :] * reached).amax(dim=1).mean()
    recall = true_positives / n_positive
    envelope = precision.flip(0).cummax(0).values.flip(0)  # best precision at this recall or beyond
    recall_gain = torch.diff(recall, prepend=recall.new_zeros(1))
    return (recall_gain * envelope).sum()


def voc_map(scores: Tensor, targets: Tensor, mode: str = "area") -> float:
    """VOC mean average precision: `voc_ap` averaged over the classes that have a positive."""
    return float(torch.nanmean(voc_ap(scores, targets, mode)))
