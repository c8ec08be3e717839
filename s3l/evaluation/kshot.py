"""k-shot evaluation on cached features: classifiers fitted on k images per class, over several seeds."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from s3l.callbacks.knn import weighted_knn_predict
from s3l.errors import S3LError
from s3l.evaluation.linear import train_linear_heads

CLASSIFIERS = ("linear", "knn")
# The kNN classifier is the pretraining monitor's (configs/stage/pretrain.yaml knn.k and knn.temperature);
# with fewer than 20 training images (k x classes) every training image votes.
KNN_NEIGHBOURS = 20
KNN_TEMPERATURE = 0.1


def kshot_indices(labels: Tensor, shots: int, seed: int) -> Tensor:
    """`shots` indices of every class present in `labels`, drawn without replacement, sorted.

    Each class's draw is `numpy.random.default_rng(seed).choice` from its sorted index list, classes in
    increasing order, so the selection depends only on the labels, `shots` and `seed`.
    """
    labels = labels.cpu().numpy()
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < shots:
            raise S3LError(
                f"{shots}-shot evaluation needs {shots} training images per class, but class {label} has "
                f"{len(members)}: lower the shots"
            )
        chosen.append(rng.choice(members, size=shots, replace=False))
    return torch.from_numpy(np.sort(np.concatenate(chosen)))


def kshot_eval(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    num_classes: int,
    shots: tuple[int, ...] = (1, 5, 10),
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4),
    classifier: str = "linear",
    **linear_kwargs,
) -> dict[int, dict]:
    """Top-1 on the whole test set of a classifier fitted on `k` training images per class, for each k of
    `shots` and each seed of `seeds` (which draws the images and, for "linear", seeds the probe).

    `classifier` is "linear" (`train_linear_heads`, given `linear_kwargs`) or "knn" (`weighted_knn_predict`
    with KNN_NEIGHBOURS and KNN_TEMPERATURE). Returns {k: {"mean", "std", "runs"}}: the runs' top-1
    fractions in seed order, their mean and their sample standard deviation (ddof=1, as k-shot papers
    report; 0.0 for a single run). Single-label targets only.
    """
    if classifier not in CLASSIFIERS:
        raise S3LError(f"unknown k-shot classifier '{classifier}'; choose one of: {', '.join(CLASSIFIERS)}")
    if train_labels.ndim != 1 or test_labels.ndim != 1:
        raise S3LError(
            f"k-shot evaluation needs single-label targets, got labels of shape {tuple(train_labels.shape)}"
        )
    results = {}
    for k in shots:
        runs = []
        for seed in seeds:
            index = kshot_indices(train_labels, k, seed)
            if classifier == "linear":
                scores = train_linear_heads(
                    {"features": train_features[index]}, train_labels[index], {"features": test_features},
                    test_labels, num_classes, seed=seed, **linear_kwargs,
                )
                runs.append(scores["features"]["top1"])
            else:
                predicted = weighted_knn_predict(
                    train_features[index], train_labels[index], test_features, num_classes,
                    KNN_NEIGHBOURS, KNN_TEMPERATURE,
                )
                runs.append((predicted.cpu() == test_labels.cpu()).float().mean().item())
        std = float(np.std(runs, ddof=1)) if len(runs) > 1 else 0.0
        results[k] = {"mean": float(np.mean(runs)), "std": std, "runs": runs}
    return results
