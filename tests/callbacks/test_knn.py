import math

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from s3l.callbacks.knn import KNNMonitor, weighted_knn_predict

# Six training points on the plane, given by angle (degrees), class and a norm that normalisation must undo.
TRAIN = [(0, 0, 2.0), (25, 1, 1.0), (-25, 1, 3.0), (90, 2, 1.0), (120, 2, 0.5), (180, 0, 1.0)]
TEST_ANGLES = [0, 100, 165]


def points(angles_and_norms: list[tuple[float, float]]) -> torch.Tensor:
    return torch.tensor([[r * math.cos(math.radians(a)), r * math.sin(math.radians(a))] for a, r in angles_and_norms])


def train_set() -> tuple[torch.Tensor, torch.Tensor]:
    return points([(a, r) for a, _, r in TRAIN]), torch.tensor([c for _, c, _ in TRAIN])


def test_set() -> torch.Tensor:
    return points([(a, 1.0) for a in TEST_ANGLES])


def vote(neighbours: list[tuple[float, int]], temperature: float) -> int:
    """The class with the largest sum of exp(cosine / T) over the listed neighbours."""
    scores: dict[int, float] = {}
    for cosine, label in neighbours:
        scores[label] = scores.get(label, 0.0) + math.exp(cosine / temperature)
    return max(scores, key=scores.get)


def cos(degrees: float) -> float:
    return math.cos(math.radians(degrees))


# The 3 nearest training points of each test point, (cosine, class), read off the angles above.
NEIGHBOURS_K3 = [
    [(cos(0), 0), (cos(25), 1), (cos(25), 1)],  # test at 0 deg
    [(cos(10), 2), (cos(20), 2), (cos(75), 1)],  # test at 100 deg
    [(cos(15), 0), (cos(45), 2), (cos(75), 2)],  # test at 165 deg
]


def test_weighted_knn_matches_hand_computed_votes():
    expected = [vote(n, 0.1) for n in NEIGHBOURS_K3]
    # At T=0.1 one very close neighbour outvotes two farther ones: exp(10) = 22026 > 2 exp(9.06) = 17254.
    assert expected == [0, 2, 0]
    predicted = weighted_knn_predict(*train_set(), test_set(), num_classes=3, k=3, temperature=0.1)
    assert predicted.tolist() == expected


def test_higher_temperature_flattens_weights_toward_majority_vote():
    expected = [vote(n, 1.0) for n in NEIGHBOURS_K3]
    # At T=1: exp(1) = 2.72 < 2 exp(0.906) = 4.95, so the two class-1 neighbours of the first point win.
    assert expected == [1, 2, 2]
    predicted = weighted_knn_predict(*train_set(), test_set(), num_classes=3, k=3, temperature=1.0)
    assert predicted.tolist() == expected


def test_k_larger_than_train_set_is_clamped_to_all_points():
    every_point = [[(cos(t - a), c) for a, c, _ in TRAIN] for t in TEST_ANGLES]
    expected = [vote(n, 1.0) for n in every_point]
    predicted = weighted_knn_predict(*train_set(), test_set(), num_classes=3, k=100, temperature=1.0)
    assert predicted.tolist() == expected


def test_chunked_prediction_equals_one_shot():
    train_features, train_labels = torch.randn(50, 8), torch.randint(0, 4, (50,))
    test_features = torch.randn(23, 8)
    one_shot = weighted_knn_predict(train_features, train_labels, test_features, 4, k=7, temperature=0.1)
    chunked = weighted_knn_predict(train_features, train_labels, test_features, 4, k=7, temperature=0.1,
                                   chunk_size=5)
    assert torch.equal(one_shot, chunked)


def images_of_classes(labels: list[int], seed: int) -> torch.Tensor:
    """2x2 single-channel images: class c lights pixel c, plus faint noise (separable after flattening)."""
    generator = torch.Generator().manual_seed(seed)
    images = 0.05 * torch.rand(len(labels), 1, 2, 2, generator=generator)
    for i, label in enumerate(labels):
        images[i].view(-1)[label] += 1.0
    return images


def loaders(test_labels: list[int] | None = None) -> tuple[DataLoader, DataLoader]:
    train_labels = [0, 1, 2] * 4
    true_test = [0, 1, 2] * 2
    train = TensorDataset(images_of_classes(train_labels, seed=0), torch.tensor(train_labels))
    test = TensorDataset(images_of_classes(true_test, seed=1), torch.tensor(test_labels or true_test))
    return DataLoader(train, batch_size=5), DataLoader(test, batch_size=4)


class RecordingFlatten(nn.Flatten):
    """Flatten that remembers whether it was in training mode at each call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls_in_training_mode: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls_in_training_mode.append(self.training)
        return super().forward(x)


class TinyModule(L.LightningModule):
    """Backbone = flatten; a frozen submodule kept in eval mode, as the linear probe keeps its BN."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = RecordingFlatten()
        self.head = nn.Linear(4, 1)
        self.frozen = nn.BatchNorm1d(4)
        self.modes_after_callbacks: list[dict[str, bool]] = []

    def on_train_epoch_start(self) -> None:
        self.frozen.eval()

    def training_step(self, batch, batch_idx):
        return self.head(self.backbone(batch[0])).pow(2).mean()

    def on_train_epoch_end(self) -> None:  # Lightning runs this after the callbacks' hook
        self.modes_after_callbacks.append({name: m.training for name, m in self.named_modules()})

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def fit(monitor: KNNMonitor, epochs: int) -> tuple[L.Trainer, TinyModule]:
    trainer = L.Trainer(accelerator="cpu", max_epochs=epochs, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[monitor])
    module = TinyModule()
    train_loader, _ = loaders()
    trainer.fit(module, train_dataloaders=train_loader)
    return trainer, module


def test_monitor_logs_perfect_accuracy_on_separable_classes_and_restores_modes():
    monitor = KNNMonitor(*loaders(), every_n_epochs=1, k=3, temperature=0.1)
    trainer, module = fit(monitor, epochs=1)
    assert monitor.last_acc1 == 1.0
    assert monitor.history == [(1, 1.0)]
    assert trainer.callback_metrics["knn/acc1"].item() == 1.0
    # 3 training steps in train mode, then 3 + 2 embedding batches (train and test loaders) in eval mode.
    assert module.backbone.calls_in_training_mode == [True] * 3 + [False] * 5
    modes = module.modes_after_callbacks[-1]
    assert modes[""] and modes["head"] and modes["backbone"] and not modes["frozen"]


def test_monitor_accuracy_counts_mislabelled_test_images():
    monitor = KNNMonitor(*loaders(test_labels=[0, 1, 2, 0, 1, 0]), every_n_epochs=1, k=3, temperature=0.1)
    fit(monitor, epochs=1)
    assert monitor.last_acc1 == pytest.approx(5 / 6)


def test_monitor_runs_every_n_epochs_and_after_the_last():
    monitor = KNNMonitor(*loaders(), every_n_epochs=2, k=3, temperature=0.1)
    fit(monitor, epochs=3)
    assert [epoch for epoch, _ in monitor.history] == [2, 3]
