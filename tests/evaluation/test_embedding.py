import importlib.util

import numpy as np
import pytest
import torch

from s3l.errors import S3LError
from s3l.evaluation.embedding import load_features, plot_embedding, save_features

CLASSES = [str(digit) for digit in range(10)]


def test_plot_embedding_writes_a_png_of_a_seeded_subset_and_returns_its_coordinates(digits_features, tmp_path):
    _, _, test, test_labels = digits_features
    path = tmp_path / "tsne.png"
    coordinates = plot_embedding(test["conv5"][:200], test_labels[:200], CLASSES, path, max_points=150)
    assert coordinates.shape == (150, 2) and np.isfinite(coordinates).all()
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and path.stat().st_size > 5000
    assert [p.name for p in tmp_path.iterdir()] == ["tsne.png"]  # no temporary file left behind


@pytest.mark.skipif(importlib.util.find_spec("umap") is not None, reason="umap-learn is installed")
def test_umap_without_umap_learn_is_one_line_saying_what_to_install(tmp_path):
    with pytest.raises(S3LError, match="^method=umap needs umap-learn: pip install umap-learn, or use tsne$"):
        plot_embedding(torch.randn(20, 4), torch.zeros(20, dtype=torch.int64), ["a"], tmp_path / "u.png", "umap")


def test_saved_features_load_back_identical_with_plain_numpy_too(digits_features, tmp_path):
    train, train_labels, test, test_labels = digits_features
    multilabel = torch.randint(0, 2, (len(test_labels), 3), dtype=torch.int8)
    path = tmp_path / "features.npz"
    save_features(path, train["conv4"], train_labels, test["conv4"], multilabel, CLASSES)
    loaded = load_features(path)
    assert torch.equal(loaded.train_features, train["conv4"]) and torch.equal(loaded.test_features, test["conv4"])
    assert torch.equal(loaded.train_labels, train_labels) and loaded.train_labels.dtype == torch.int64
    assert torch.equal(loaded.test_labels, multilabel) and loaded.test_labels.dtype == torch.int8
    assert loaded.classes == CLASSES
    with np.load(path) as data:  # no pickle needed
        assert sorted(data.files) == ["classes", "test_features", "test_labels", "train_features", "train_labels"]
    assert [p.name for p in tmp_path.iterdir()] == ["features.npz"]
