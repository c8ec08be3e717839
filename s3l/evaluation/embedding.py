"""Cached features on disk (.npz) and 2-D maps of them (t-SNE or UMAP) as PNG scatter plots."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from s3l.checkpoints import write_atomically
from s3l.errors import S3LError

METHODS = ("tsne", "umap")


class SavedFeatures(NamedTuple):
    """What `save_features` wrote, in its argument order."""

    train_features: Tensor
    train_labels: Tensor
    test_features: Tensor
    test_labels: Tensor
    classes: list[str]


def save_features(
    path: str | Path, train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor,
    classes: list[str],
) -> None:
    """Write features, labels and class names to the `.npz` file `path` (temporary file, then rename).

    The arrays are named like the arguments; `numpy.load(path)` reads them without pickling.
    """
    arrays = {
        "train_features": train_features.float().numpy(),
        "train_labels": train_labels.numpy(),
        "test_features": test_features.float().numpy(),
        "test_labels": test_labels.numpy(),
        "classes": np.array(classes, dtype=str),
    }

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as file:  # a file object: numpy.savez would append ".npz" to a path
            np.savez(file, **arrays)

    write_atomically(Path(path), write)


def load_features(path: str | Path) -> SavedFeatures:
    """The tensors and class names `save_features` wrote to `path`."""
    with np.load(path) as data:
        return SavedFeatures(
            torch.from_numpy(data["train_features"]),
            torch.from_numpy(data["train_labels"]),
            torch.from_numpy(data["test_features"]),
            torch.from_numpy(data["test_labels"]),
            [str(name) for name in data["classes"]],
        )


def plot_embedding(
    features: Tensor, labels: Tensor, classes: list[str], path: str | Path, method: str = "tsne",
    seed: int = 0, max_points: int = 5000, title: str | None = None,
) -> np.ndarray:
    """Map `features` to 2-D with `method` ("tsne" or "umap"), save a scatter coloured by class as the PNG
    `path` (written atomically), and return the (n, 2) coordinates. Labels are one class index per image.

    At most `max_points` images are mapped, a seeded random subset in index order. Colours come from tab10
    (up to 10 classes) or tab20 (repeating past 20 classes); the legend is drawn for up to 20 classes.
    """
    if method not in METHODS:
        raise S3LError(f"unknown embedding method '{method}'; choose one of: {', '.join(METHODS)}")
    if labels.ndim != 1:
        raise S3LError(f"an embedding plot is coloured by one label per image, got labels of shape {tuple(labels.shape)}")
    features, labels = features.float().cpu().numpy(), labels.cpu().numpy()
    if len(features) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(features), size=max_points, replace=False))
        features, labels = features[keep], labels[keep]
    coordinates = _map_2d(features, method, seed)
    _scatter(coordinates, labels, classes, path, title or f"{method} of {len(labels)} images")
    return coordinates


def _map_2d(features: np.ndarray, method: str, seed: int) -> np.ndarray:
    if method == "umap":
        try:
            import umap
        except ImportError:
            raise S3LError("method=umap needs umap-learn: pip install umap-learn, or use tsne") from None
        return umap.UMAP(n_components=2, random_state=seed).fit_transform(features)
    from sklearn.manifold import TSNE  # imported here: only the plots need scikit-learn

    # scikit-learn requires perplexity < number of points; 30 is its default.
    perplexity = min(30.0, len(features) - 1.0)
    return TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(features)


def _scatter(coordinates: np.ndarray, labels: np.ndarray, classes: list[str], path: str | Path, title: str) -> None:
    # A Figure with its own Agg canvas: no pyplot, so the global backend and figure registry stay untouched.
    figure = Figure(figsize=(7, 6))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    colours = colormaps["tab10" if len(classes) <= 10 else "tab20"]
    size = min(20.0, 20000.0 / len(labels))
    for label in np.unique(labels):
        points = coordinates[labels == label]
        axes.scatter(points[:, 0], points[:, 1], s=size, color=colours(int(label) % colours.N),
                     label=classes[label], linewidths=0)
    if len(classes) <= 20:
        axes.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=2, frameon=False)
    axes.set_title(title)
    axes.set_xticks([])
    axes.set_yticks([])
    write_atomically(Path(path), lambda tmp: figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
