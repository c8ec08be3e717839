"""The method base and SimCLR, BYOL and SimSiam: built from their YAML, their steps against direct
computations, target networks without gradients, EMA after each optimizer step, and the optimizer groups."""

import copy
from types import SimpleNamespace

import pytest
import torch

from s3l.config import stage_specs
from s3l.methods.base import SSLMethod, build_method
from s3l.methods.byol import BYOL
from s3l.methods.losses import byol_loss, negative_cosine, nt_xent
from s3l.methods.simclr import SimCLR
from s3l.methods.simsiam import SimSiam
from s3l.schema import settings_of
from s3l.stages.base import build_stage
from tests.conftest import CONFIGS

SETTINGS = dict(architecture="resnet10", stem="imagenet", lr=0.1, momentum=0.9, weight_decay=1e-4,
                lr_schedule="cosine_epoch")
METHODS = sorted(p.stem for p in (CONFIGS / "method").glob("*.yaml"))


def views(n: int = 4, size: int = 16, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, size, size, generator=generator) for _ in range(2)]


def attach(module: SSLMethod, global_step: int = 0, total_steps: int = 100, max_epochs: int = 10) -> None:
    """A stand-in for the Trainer attributes the methods read (logging, the Trainer's business, is skipped)."""
    module._trainer = SimpleNamespace(global_step=global_step, estimated_stepping_batches=total_steps,
                                      max_epochs=max_epochs)
    module.log = lambda *args, **kwargs: None


@pytest.mark.parametrize("method", METHODS)
def test_every_method_yaml_builds_its_class_and_states_every_setting(compose_cfg, method):
    cfg = compose_cfg(f"method={method}", "architecture=resnet10")
    (pretrain,) = [s for s in stage_specs(cfg) if s.cfg.kind == "pretrain"]
    with torch.device("meta"):
        module = build_method(cfg.method, pretrain.cfg, "imagenet", cfg.optimizer, world_size=1)
    assert isinstance(module, SSLMethod) and type(module).__name__.lower() == method
    own = [name for name, (_, default) in settings_of(type(module)).items() if name not in SETTINGS
           and name not in ("optimizer", "milestones")]
    assert [name for name in own if name not in cfg.method] == []  # no default hidden in Python
    assert module.hparams.optimizer == {"_target_": "s3l.optim.sgd", "exclude_bn_and_bias": False}
    assert module.hparams.bn_splits == cfg.method.bn_splits and module.hparams.lr == pretrain.cfg.lr


def test_each_methods_cost_counts_its_forward_and_backward_passes(compose_cfg):
    costs = {}
    for method in METHODS:
        cfg = compose_cfg(f"method={method}", "architecture=resnet10")
        spec = next(s for s in stage_specs(cfg) if s.cfg.kind == "pretrain")
        meter = build_stage(cfg, spec).cost_meter()
        costs[method] = meter.train_flops_per_image / 1e9 / meter.forward_gflops_per_image
    assert costs == pytest.approx({"mocov2": 4.0, "simclr": 6.0, "byol": 8.0, "simsiam": 6.0})


def test_encode_views_gives_each_batchnorm_group_both_views_of_its_images():
    torch.manual_seed(0)
    split = SimCLR(dim=8, hidden_dim=None, T=0.1, negatives="global", base_temperature=None, bn_splits=2,
                   **SETTINGS)
    plain = SimCLR(dim=8, hidden_dim=None, T=0.1, negatives="global", base_temperature=None, bn_splits=1,
                   **SETTINGS)
    plain.load_state_dict(split.state_dict())
    v1, v2 = views(n=4)
    z1, z2 = split.encode_views(split.encoder, [v1, v2])
    for group in (slice(0, 2), slice(2, 4)):  # as two GPUs, each with both views of 2 images
        expected = plain.encoder(torch.cat([v1[group], v2[group]]))
        torch.testing.assert_close(torch.cat([z1[group], z2[group]]), expected, atol=1e-5, rtol=1e-4)


def test_simclr_step_is_nt_xent_of_its_encoder_and_scaled_by_t_over_base_temperature():
    torch.manual_seed(1)
    model = SimCLR(dim=8, hidden_dim=None, T=0.1, negatives="global", base_temperature=0.07, bn_splits=1,
                   **SETTINGS)
    v1, v2 = views()
    loss = model.training_step(([v1, v2], torch.zeros(4)), 0)
    z1, z2 = model.encoder(torch.cat([v1, v2])).chunk(2)
    assert loss.item() == pytest.approx(nt_xent(z1, z2, 0.1).item() * 0.1 / 0.07, rel=1e-5)


def byol() -> BYOL:
    torch.manual_seed(2)
    return BYOL(dim=8, hidden_dim=16, tau_base=0.9, tau_final=1.0, tau_schedule="cosine", bn_splits=1,
                **SETTINGS)


def test_byol_step_is_the_symmetric_loss_and_its_target_receives_no_gradient():
    model = byol()
    attach(model)
    reference = copy.deepcopy(model)
    v1, v2 = views()
    loss = model.training_step(([v1, v2], torch.zeros(4)), 0)
    loss.backward()
    assert all(p.grad is None for p in model.target.parameters())
    assert all(p.grad is not None for p in model.predictor.parameters())
    z1, z2 = reference.encoder(torch.cat([v1, v2])).chunk(2)
    t1, t2 = reference.target(torch.cat([v1, v2])).chunk(2)
    p1, p2 = reference.predictor(z1), reference.predictor(z2)
    assert loss.item() == pytest.approx((byol_loss(p1, t2) + byol_loss(p2, t1)).item(), rel=1e-5)


def test_byol_target_follows_the_online_encoder_after_each_step_by_the_cosine_schedule():
    model = byol()
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(1.0)
    online = [p.clone() for p in model.encoder.parameters()]
    target = [p.clone() for p in model.target.parameters()]
    attach(model, global_step=26, total_steps=100)  # the 26th optimizer step (0-based 25) just happened
    model.on_train_batch_end(None, None, 0)
    tau = 1 - (1 - 0.9) * (torch.cos(torch.tensor(torch.pi * 25 / 100)).item() + 1) / 2
    for after, old, new in zip(model.target.parameters(), target, online):
        torch.testing.assert_close(after, tau * old + (1 - tau) * new)


def test_a_backbone_init_gives_the_target_the_same_weights():
    model = byol()
    with torch.no_grad():
        model.backbone.conv1.weight.add_(1.0)
    model.sync_targets()
    assert torch.equal(model.target.backbone.conv1.weight, model.encoder.backbone.conv1.weight)
    assert not any(p.requires_grad for p in model.target.parameters())


def simsiam(fix: bool = True) -> SimSiam:
    torch.manual_seed(3)
    return SimSiam(dim=16, hidden_dim=None, projector_layers=3, predictor_hidden_dim=4, fix_predictor_lr=fix,
                   bn_splits=1, **SETTINGS)


def test_simsiam_step_is_the_symmetric_negative_cosine_with_stop_gradient():
    model = simsiam()
    v1, v2 = views()
    loss = model.training_step(([v1, v2], torch.zeros(4)), 0)
    with torch.no_grad():
        z1, z2 = model.encoder(torch.cat([v1, v2])).chunk(2)
        expected = 0.5 * (negative_cosine(model.predictor(z1), z2) + negative_cosine(model.predictor(z2), z1))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    assert -1.0 <= loss.item() <= 1.0


def test_simsiam_predictor_keeps_its_lr_while_the_encoder_follows_the_cosine():
    model = simsiam(fix=True)
    attach(model, total_steps=40, max_epochs=4)
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    encoder_group, predictor_group = optimizer.param_groups
    assert {id(p) for p in predictor_group["params"]} == {id(p) for p in model.predictor.parameters()}
    for _ in range(2):
        optimizer.step()
        scheduler.step()  # two epochs of four
    assert encoder_group["lr"] == pytest.approx(0.1 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi / 2)).item()))
    assert predictor_group["lr"] == 0.1
    assert len(simsiam(fix=False).parameter_groups()) == 1


def test_every_methods_hyperparameters_load_with_weights_only(tmp_path):
    model = simsiam()
    torch.save({"hyper_parameters": dict(model.hparams)}, tmp_path / "h.ckpt")
    loaded = torch.load(tmp_path / "h.ckpt", weights_only=True)["hyper_parameters"]
    assert loaded["predictor_hidden_dim"] == 4 and loaded["architecture"] == "resnet10"


def test_the_checkpoint_names_where_the_backbone_sits():
    for model, prefix in ((byol(), "encoder.backbone."), (simsiam(), "encoder.backbone.")):
        checkpoint = {}
        model.on_save_checkpoint(checkpoint)
        assert checkpoint["backbone_prefix"] == prefix
        assert f"{prefix}conv1.weight" in model.state_dict()


def test_embeddings_stay_float32_in_the_losses_under_bf16_autocast():
    model = simsiam()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.training_step((views(), torch.zeros(4)), 0)
    assert loss.dtype == torch.float32


@pytest.mark.parametrize("architecture", ["resnet50", "custom_resnet50", "resnet18"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_a_step_on_every_architecture(compose_cfg, method, architecture):
    """Heads fit every feature width (2048, 1024 without conv5, 512): one real step on 16 px images."""
    cfg = compose_cfg(f"method={method}", f"architecture={architecture}", "method.bn_splits=2",
                      "experiment=s3l")
    if method == "mocov2":
        cfg.method.K = 8  # a multiple of the batch of 4
    pretrain = next(s for s in stage_specs(cfg) if s.cfg.kind == "pretrain")
    torch.manual_seed(0)
    module = build_method(cfg.method, pretrain.cfg, "imagenet", cfg.optimizer, world_size=1)
    attach(module)
    loss = module.training_step((views(n=4, size=16), torch.zeros(4)), 0)
    loss.backward()
    assert torch.isfinite(loss) and module.backbone.conv1.weight.grad is not None
    assert module.backbone.feature_dim == {"resnet50": 2048, "custom_resnet50": 1024, "resnet18": 512}[architecture]
