import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from s3l.checkpoints import read_backbone_state
from s3l.errors import S3LError
from s3l.metrics import mean_per_class_accuracy, voc_map
from s3l.stages.classify import Classifier, MeanPerClassAccuracy, mixup_batch, mixup_loss, multilabel_bce

STAGES = {
    "finetune": {"freeze": "none", "fc_init": "default", "bn_frozen": False, "mixup_alpha": 1.0},
    "warmup": {"freeze": "conv1-4", "fc_init": "normal", "bn_frozen": False, "mixup_alpha": 0.0},
    "linear": {"freeze": "backbone", "fc_init": "normal", "bn_frozen": True, "mixup_alpha": 0.0},
}


def _classifier(stage: str, **overrides) -> Classifier:
    arguments = {
        "architecture": "resnet10",
        "stem": "imagenet",
        "num_classes": 3,
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "lr_schedule": "constant",
        "milestones": None,
        **STAGES[stage],
        **overrides,
    }
    return Classifier(**arguments)


def _loader(n: int = 16, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 16, 16, generator=generator)
    labels = torch.randint(0, 3, (n,), generator=generator)
    return DataLoader(TensorDataset(images, labels), batch_size=8)


def _multilabel_loader(n: int = 8, seed: int = 0) -> DataLoader:
    """Random images with int8 targets over 3 labels (1 present, 0 absent, -1 difficult-only), each class present."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 16, 16, generator=generator)
    targets = torch.randint(-1, 2, (n, 3), generator=generator, dtype=torch.int8)
    targets[torch.arange(3), torch.arange(3)] = 1
    return DataLoader(TensorDataset(images, targets), batch_size=4)


def _trainer(**overrides) -> L.Trainer:
    arguments = {
        "accelerator": "cpu",
        "max_steps": 3,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return L.Trainer(**(arguments | overrides))


def _fit(model: Classifier) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Train three steps; return the state dict before and after."""
    L.seed_everything(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _trainer().fit(model, train_dataloaders=_loader())
    return before, model.state_dict()


def test_warmup_trains_only_layer4_and_fc_while_frozen_bn_stats_drift_as_upstream():
    model = _classifier("warmup")
    before, after = _fit(model)
    frozen = [k for k in before if k.startswith("backbone.") and not k.startswith("backbone.layer4.")]
    frozen_params = [k for k in frozen if "running" not in k and "num_batches" not in k]
    assert frozen_params and all(torch.equal(after[k], before[k]) for k in frozen_params)
    trained = [
        k for k in before if k.startswith(("backbone.layer4.", "fc.")) and k.endswith(("weight", "bias"))
    ]
    assert all(not torch.equal(after[k], before[k]) for k in trained)
    # main_freeze.py keeps train-mode BN, so the frozen layers' running statistics still move (§5 item 11).
    assert not torch.equal(
        after["backbone.layer1.0.bn1.running_mean"], before["backbone.layer1.0.bn1.running_mean"]
    )
    for name, param in model.backbone.named_parameters():
        if not name.startswith("layer4."):
            assert not param.requires_grad and param.grad is None, name


def test_warmup_of_a_net_without_layer4_is_refused():
    with pytest.raises(S3LError, match="custom_resnet18 has no layer4"):
        _classifier("warmup", architecture="custom_resnet18")


def test_linear_probe_changes_only_fc_and_keeps_bn_statistics():
    model = _classifier("linear")
    assert model.fc.weight.std().item() == pytest.approx(0.01, rel=0.2)
    assert torch.equal(model.fc.bias, torch.zeros(3))
    before, after = _fit(model)
    for key in before:
        if key.startswith("backbone."):
            assert torch.equal(after[key], before[key]), key
    assert not torch.equal(after["fc.weight"], before["fc.weight"])
    assert not torch.equal(after["fc.bias"], before["fc.bias"])
    model.train()
    assert model.fc.training and not model.backbone.training


def test_frozen_check_names_the_first_changed_tensor():
    model = _classifier("linear")
    reference = model.frozen_tensors()
    assert "layer1.0.bn1.running_mean" in reference and "conv1.weight" in reference
    model.check_frozen_unchanged(reference)
    with torch.no_grad():
        model.backbone.layer2[0].bn1.running_var.add_(1.0)
    with pytest.raises(RuntimeError, match="layer2.0.bn1.running_var changed"):
        model.check_frozen_unchanged(reference)


def test_finetune_changes_every_parameter():
    model = _classifier("finetune")
    before, after = _fit(model)
    names = [name for name, _ in model.named_parameters()]
    assert all(not torch.equal(after[name], before[name]) for name in names)


def test_mixup_batch_blends_each_image_with_its_partner():
    x = torch.randn(6, 3, 4, 4)
    y = torch.arange(6)  # unique labels reveal the permutation
    mixed, y_out, y_perm, lam = mixup_batch(x, y, alpha=1.0, generator=torch.Generator().manual_seed(3))
    assert 0.0 < lam < 1.0
    assert torch.equal(y_out, y)
    assert sorted(y_perm.tolist()) == list(range(6))
    assert torch.allclose(mixed, lam * x + (1 - lam) * x[y_perm])
    again = mixup_batch(x, y, alpha=1.0, generator=torch.Generator().manual_seed(3))
    assert again[3] == lam and torch.equal(again[2], y_perm)


def test_mixup_with_nonpositive_alpha_leaves_the_batch_alone():
    x, y = torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])
    mixed, y_out, y_perm, lam = mixup_batch(x, y, alpha=0.0)
    assert lam == 1.0 and mixed is x and torch.equal(y_perm, y) and torch.equal(y_out, y)


def test_mixup_loss_weights_both_labels_by_lambda():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-0.5, 1.5, 0.0]])
    y = torch.tensor([0, 2, 1])
    y_perm = y[torch.tensor([2, 0, 1])]
    lam = 0.3
    log_probs = logits - logits.exp().sum(dim=1, keepdim=True).log()
    ce_y = -log_probs[torch.arange(3), y].mean()
    ce_perm = -log_probs[torch.arange(3), y_perm].mean()
    expected = lam * ce_y + (1 - lam) * ce_perm
    assert mixup_loss(logits, y, y_perm, lam).item() == pytest.approx(expected.item(), rel=1e-6)
    assert mixup_loss(logits, y, y, 1.0).item() == pytest.approx(ce_y.item(), rel=1e-6)


def test_best_and_last_accuracy_follow_the_epochs_and_survive_a_checkpoint():
    model = _classifier("finetune")
    for epoch, acc1 in enumerate([0.2, 0.5, 0.4]):
        model.track({"val/acc1": acc1, "val/acc5": 1.0}, epoch)
    assert (model.best_acc1, model.best_epoch, model.last_acc1) == (0.5, 1, 0.4)
    assert (model.metric_name, model.best_score, model.last_score) == ("top1", 0.5, 0.4)
    checkpoint: dict = {}
    model.on_save_checkpoint(checkpoint)
    resumed = _classifier("finetune")
    resumed.on_load_checkpoint(checkpoint)
    assert (resumed.best_acc1, resumed.best_epoch, resumed.last_acc1) == (0.5, 1, 0.4)
    assert (resumed.best_score, resumed.last_score) == (0.5, 0.4)


def test_best_epoch_follows_the_headline_score_while_top1_keeps_its_own_best():
    model = _classifier("finetune", metric="mean_per_class")
    model.track({"val/acc1": 0.5, "val/acc_per_class": 0.3}, 0)
    model.track({"val/acc1": 0.4, "val/acc_per_class": 0.35}, 1)
    assert (model.best_score, model.best_epoch, model.last_score) == (0.35, 1, 0.35)
    assert (model.best_acc1, model.last_acc1) == (0.5, 0.4)


def test_map_score_follows_the_epochs_and_survives_a_checkpoint():
    model = _classifier("finetune", metric="map", stem="cifar")
    for epoch, area in enumerate([0.3, 0.6, 0.5]):
        model.track({"val/map": area, "val/map11": area + 0.01}, epoch)
    assert (model.best_score, model.best_epoch, model.last_score) == (0.6, 1, 0.5)
    assert model.best_acc1 is None and model.last_acc1 is None  # top-1 has no meaning for multi-label targets
    checkpoint: dict = {}
    model.on_save_checkpoint(checkpoint)
    resumed = _classifier("finetune", metric="map", stem="cifar")
    resumed.on_load_checkpoint(checkpoint)
    assert (resumed.best_score, resumed.best_epoch, resumed.last_score) == (0.6, 1, 0.5)


def test_validation_logs_test_accuracies_of_the_final_model():
    model = _classifier("finetune", metric="mean_per_class")
    val = _loader(n=12, seed=1)
    trainer = _trainer(max_steps=-1, max_epochs=2, num_sanity_val_steps=1)
    L.seed_everything(0)
    trainer.fit(model, train_dataloaders=_loader(), val_dataloaders=val)

    images, labels = val.dataset.tensors
    model.eval()
    with torch.no_grad():
        predicted = model(images).argmax(dim=1)
    correct = predicted == labels
    per_class = [correct[labels == c].float().mean().item() for c in labels.unique()]
    metrics = trainer.callback_metrics
    assert model.last_acc1 == pytest.approx(correct.float().mean().item())
    assert metrics["val/acc1"].item() == pytest.approx(model.last_acc1)
    assert metrics["val/acc5"].item() == 1.0  # top-3 of 3 classes
    assert metrics["val/acc_per_class"].item() == pytest.approx(sum(per_class) / len(per_class))
    assert model.best_epoch in (0, 1) and model.best_acc1 >= model.last_acc1
    assert metrics["val/acc1_best"].item() == pytest.approx(model.best_acc1)
    assert metrics["val/score"].item() == pytest.approx(metrics["val/acc_per_class"].item())
    assert metrics["val/score_best"].item() == pytest.approx(model.best_score)


def test_multilabel_classifier_trains_with_bce_and_validates_with_voc_map():
    model = _classifier("finetune", metric="map", stem="cifar")
    val = _multilabel_loader(seed=1)
    trainer = _trainer(max_steps=-1, max_epochs=1)
    L.seed_everything(0)
    trainer.fit(model, train_dataloaders=_multilabel_loader(), val_dataloaders=val)

    images, targets = val.dataset.tensors
    model.eval()
    with torch.no_grad():
        scores = model(images)
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss_epoch"])
    assert metrics["val/map"].item() == pytest.approx(voc_map(scores, targets, "area"), abs=1e-6)
    assert metrics["val/map11"].item() == pytest.approx(voc_map(scores, targets, "11point"), abs=1e-6)
    assert metrics["val/score"].item() == pytest.approx(metrics["val/map"].item())
    assert model.last_score == model.best_score == pytest.approx(metrics["val/map"].item())
    assert not {"train/acc1", "val/acc1", "val/acc5", "val/acc1_best"} & metrics.keys()


def test_multilabel_loss_counts_difficult_labels_present_and_mixes_like_cross_entropy():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -2.0]])
    y = torch.tensor([[1, -1, 0], [0, 1, 1]], dtype=torch.int8)
    present = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    bce = -(present * logits.sigmoid().log() + (1 - present) * (1 - logits.sigmoid()).log()).mean()
    assert multilabel_bce(logits, y).item() == pytest.approx(bce.item(), rel=1e-6)
    y_perm = y.flip(0)
    expected = 0.3 * multilabel_bce(logits, y) + 0.7 * multilabel_bce(logits, y_perm)
    assert mixup_loss(logits, y, y_perm, 0.3, multilabel_bce).item() == pytest.approx(expected.item())


def test_sanity_check_validation_is_not_tracked():
    model = _classifier("finetune")
    trainer = _trainer()
    trainer.state.stage = "sanity_check"
    model.trainer = trainer
    model.val_acc1.update(torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([1]))
    model.on_validation_epoch_end()
    assert (model.best_acc1, model.best_epoch, model.last_acc1) == (0.0, -1, 0.0)
    assert model.val_acc1.update_count == 0


def test_unknown_freeze_mode_lists_valid_ones():
    with pytest.raises(S3LError, match="none, conv1-4, backbone"):
        _classifier("finetune", freeze="layer3")


def test_unknown_metric_lists_valid_ones():
    with pytest.raises(S3LError, match="top1, mean_per_class, map"):
        _classifier("finetune", metric="top5")


def test_lightning_checkpoint_reads_back_as_backbone_weights_and_resumes_best_accuracy(tmp_path):
    model = _classifier("warmup", milestones=[60, 80], lr_schedule="step")
    trainer = _trainer()
    trainer.fit(model, train_dataloaders=_loader())
    model.track({"val/acc1": 0.75}, 0)
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)

    state, meta = read_backbone_state(path)
    assert meta == {}
    assert state.keys() == model.backbone.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.backbone.state_dict().items())
    resumed = _classifier("warmup")
    resumed.on_load_checkpoint(torch.load(path, weights_only=True))
    assert (resumed.best_acc1, resumed.best_epoch) == (0.75, 0)


def test_validation_mean_per_class_is_the_evaluation_stages_definition():
    """A class that is predicted but has no test image does not count (upstream, s3l.metrics), unlike
    torchmetrics' macro accuracy."""
    metric = MeanPerClassAccuracy(num_classes=3)
    targets = torch.tensor([0, 0, 1, 1])
    predictions = torch.tensor([0, 0, 1, 2])
    metric.update(torch.nn.functional.one_hot(predictions, 3).float(), targets)
    assert float(metric.compute()) == pytest.approx(mean_per_class_accuracy(predictions, targets, 3)) == 0.75
