import pytest
import torch

from s3l.evaluation.linear import train_linear_heads
from s3l.metrics import accuracies


def blobs(count: int, dim: int, scale: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` points around each of 3 far-apart centres in `dim` dimensions, times `scale`, and their class."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(3, dim, generator=generator) * 10
    labels = torch.arange(3).repeat_interleave(count)
    return (centres[labels] + torch.randn(len(labels), dim, generator=generator)) * scale, labels


def two_feature_sets(seed: int) -> tuple[dict, torch.Tensor]:
    # Two sets of very different widths and scales, like conv2 and conv5 features.
    small, labels = blobs(40, 5, 1e-3, seed)
    large, _ = blobs(40, 50, 1e3, seed + 100)
    return {"small": small, "large": large}, labels


def test_each_head_separates_linearly_separable_blobs():
    train, train_labels = two_feature_sets(0)
    test, test_labels = two_feature_sets(0)  # same centres, fresh points below
    test = {name: value + 0.1 * torch.randn_like(value) * value.std() for name, value in test.items()}
    results = train_linear_heads(train, train_labels, test, test_labels, 3, epochs=20)
    assert results == {name: {"top1": 1.0, "mean_per_class": 1.0} for name in ("small", "large")}


def test_the_same_seed_gives_identical_scores_and_another_seed_different_ones():
    train, labels = two_feature_sets(0)
    multilabel = torch.nn.functional.one_hot(labels, 3).to(torch.int8)

    def scores(seed: int) -> dict[str, torch.Tensor]:
        results = train_linear_heads(train, multilabel, train, multilabel, 3, epochs=5, seed=seed, multilabel=True)
        return {name: value["scores"] for name, value in results.items()}

    first, again, other = scores(0), scores(0), scores(1)
    assert all(value.shape == (120, 3) for value in first.values())
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not any(torch.equal(first[name], other[name]) for name in first)


def test_a_head_trained_with_others_equals_the_head_trained_alone():
    train, labels = two_feature_sets(0)
    together = train_linear_heads(train, labels, train, labels, 3, epochs=3)
    alone = train_linear_heads({"large": train["large"]}, labels, {"large": train["large"]}, labels, 3, epochs=3)
    assert together["large"] == alone["large"]


def test_mean_per_class_averages_the_recall_of_the_classes_present():
    labels = torch.tensor([0, 0, 0, 0, 2, 2])  # class 1 absent
    predicted = torch.tensor([0, 0, 0, 1, 2, 0])
    assert accuracies(predicted, labels, num_classes=3) == pytest.approx({"top1": 4 / 6, "mean_per_class": (3 / 4 + 1 / 2) / 2})


def test_probes_on_random_conv_features_of_the_digits_beat_chance(digits_features):
    train, train_labels, test, test_labels = digits_features
    results = train_linear_heads(train, train_labels, test, test_labels, 10)
    assert all(value["top1"] > 0.5 and value["mean_per_class"] > 0.5 for value in results.values())
