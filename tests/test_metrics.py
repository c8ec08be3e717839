import math

import pytest
import torch
from torchmetrics.functional.classification import binary_average_precision

from s3l.errors import S3LError
from s3l.metrics import mean_per_class_accuracy, voc_ap, voc_map

# Six samples, given out of order; ranked by score they read 1 0 0 1 1 0 (3 positives):
#   rank        1    2    3    4    5    6
#   label       1    0    0    1    1    0
#   precision   1   1/2  1/3  2/4  3/5  3/6
#   recall     1/3  1/3  1/3  2/3   1    1
#   envelope    1   3/5  3/5  3/5  3/5  3/6   (best precision at this rank or any later one)
# area: recall rises by 1/3 at ranks 1, 4, 5 -> (1 + 3/5 + 3/5) / 3 = 11/15
# 11-point: thresholds 0, .1, .2, .3 reach rank 1 (precision 1); .4 ... 1 only ranks 4-6 (best 3/5)
#   -> (4 * 1 + 7 * 3/5) / 11 = 41/55
# The non-interpolated step AP (torchmetrics, sklearn) uses raw precision at ranks 1, 4, 5: (1 + 1/2 + 3/5) / 3 = 0.7
SCORES = torch.tensor([0.5, 0.9, 0.3, 0.8, 0.7, 0.6])
LABELS = torch.tensor([1, 1, 0, 0, 0, 1], dtype=torch.int8)  # ranks 5, 1, 6, 2, 3, 4


def test_voc_ap_of_a_hand_ranked_class():
    scores, targets = SCORES[:, None], LABELS[:, None]
    assert voc_ap(scores, targets, "area").item() == pytest.approx(11 / 15)
    assert voc_ap(scores, targets, "11point").item() == pytest.approx(41 / 55)
    assert binary_average_precision(SCORES, LABELS.long()).item() == pytest.approx(0.7)


def test_11point_recall_on_a_threshold_counts_as_reaching_it():
    # Ranked 1 1 1 0 then 7 positives: recall 3/10 at rank 3 (precision 1) must meet the 0.3 threshold;
    # from 0.4 on the best precision is the last rank's 10/11 -> (4 * 1 + 7 * 10/11) / 11 = 114/121.
    labels = torch.tensor([1, 1, 1, 0] + [1] * 7, dtype=torch.int8)
    scores = torch.arange(11, 0, -1, dtype=torch.float32)
    assert voc_ap(scores[:, None], labels[:, None], "11point").item() == pytest.approx(114 / 121)


def test_difficult_only_samples_leave_the_ranking():
    # Ranked -1 1 0 1: without the difficult sample 1 0 1, precision 1, 1/2, 2/3 -> area (1 + 2/3) / 2 = 5/6.
    # Counted as a negative it would rank first and give 1/2.
    scores = torch.tensor([[0.95], [0.9], [0.8], [0.7]])
    targets = torch.tensor([[-1], [1], [0], [1]], dtype=torch.int8)
    assert voc_ap(scores, targets, "area").item() == pytest.approx(5 / 6)


def test_a_class_without_positives_is_nan_and_left_out_of_the_mean():
    # Class 0: the hand-ranked class (11/15). Class 1: its positives are the top 3 scores (AP 1).
    # Class 2: no positive at test, only absent and difficult-only samples.
    perfect = torch.tensor([0, 1, 0, 1, 1, 0], dtype=torch.int8)
    absent = torch.tensor([0, -1, 0, 0, 0, -1], dtype=torch.int8)
    scores = torch.stack([SCORES, SCORES, SCORES], dim=1)
    targets = torch.stack([LABELS, perfect, absent], dim=1)
    ap = voc_ap(scores, targets, "area")
    assert ap[:2].tolist() == pytest.approx([11 / 15, 1.0]) and math.isnan(ap[2].item())
    assert voc_map(scores, targets) == pytest.approx((11 / 15 + 1.0) / 2)


def test_unknown_ap_mode_lists_valid_ones():
    with pytest.raises(S3LError, match="area, 11point"):
        voc_ap(SCORES[:, None], LABELS[:, None], "integral")


def test_mean_per_class_accuracy_weighs_classes_equally():
    # Class 0: 7 of 8 right (one predicted as class 2); class 1: 1 of 2 right; class 2 never a target.
    # Top-1 is 8/10; mean per-class accuracy is (7/8 + 1/2) / 2 = 11/16.
    targets = torch.tensor([0] * 8 + [1] * 2)
    predictions = torch.tensor([0] * 7 + [2] + [1, 0])
    assert (predictions == targets).float().mean().item() == pytest.approx(0.8)
    assert mean_per_class_accuracy(predictions, targets, num_classes=3) == pytest.approx(11 / 16)
