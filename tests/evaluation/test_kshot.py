import numpy as np
import pytest
import torch

from s3l.errors import S3LError
from s3l.evaluation.kshot import kshot_eval, kshot_indices

LABELS = torch.arange(5).repeat_interleave(7)[torch.randperm(35, generator=torch.Generator().manual_seed(0))]


def test_kshot_indices_takes_k_per_class_sorted_and_seeded():
    index = kshot_indices(LABELS, 3, seed=0)
    assert torch.bincount(LABELS[index]).tolist() == [3] * 5
    assert torch.equal(index, index.sort().values) and len(index.unique()) == 15
    assert torch.equal(index, kshot_indices(LABELS, 3, seed=0))
    assert not torch.equal(index, kshot_indices(LABELS, 3, seed=1))


def test_a_class_with_too_few_images_is_one_line_naming_it():
    labels = torch.cat([LABELS, torch.tensor([5, 5])])
    with pytest.raises(S3LError, match=r"^3-shot evaluation needs 3 training images per class, but class 5 has 2"):
        kshot_indices(labels, 3, seed=0)


@pytest.mark.parametrize("classifier", ["linear", "knn"])
def test_kshot_eval_reports_the_mean_and_sample_std_of_its_runs(digits_features, classifier):
    train, train_labels, test, test_labels = digits_features
    args = (train["conv5"], train_labels, test["conv5"], test_labels, 10)
    results = kshot_eval(*args, shots=(1, 5), seeds=(0, 1, 2), classifier=classifier, epochs=20)
    assert list(results) == [1, 5]
    for summary in results.values():
        assert len(summary["runs"]) == 3 and all(0.1 < run <= 1 for run in summary["runs"])
        assert summary["mean"] == pytest.approx(np.mean(summary["runs"]))
        assert summary["std"] == pytest.approx(np.std(summary["runs"], ddof=1))
    assert results[5]["mean"] > results[1]["mean"]
    assert kshot_eval(*args, shots=(1, 5), seeds=(0, 1, 2), classifier=classifier, epochs=20) == results


def test_kshot_eval_refuses_multilabel_targets_and_unknown_classifiers():
    features = torch.randn(35, 4)
    with pytest.raises(S3LError, match="single-label"):
        kshot_eval(features, torch.ones(35, 5), features, torch.ones(35, 5), 5)
    with pytest.raises(S3LError, match="unknown k-shot classifier 'svm'"):
        kshot_eval(features, LABELS, features, LABELS, 5, classifier="svm")
