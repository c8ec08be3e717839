import json
from pathlib import Path

import pytest
import torch

import s3l
from s3l.checkpoints import export_backbone, load_backbone, read_backbone_state
from s3l.errors import S3LError
from s3l.models.resnet import build_backbone

META = {
    "architecture": "resnet10",
    "resolution": 112,
    "stage": "pretrain",
    "method": "mocov2",
    "dataset": "cub200",
    "epochs": 2,
    "config_hash": "abc123",
}


def _randomized(name: str) -> dict[str, torch.Tensor]:
    """A backbone state dict whose every float tensor is random, so copies are distinguishable."""
    state = build_backbone(name).state_dict()
    return {k: torch.randn_like(v) if v.is_floating_point() else v.clone() for k, v in state.items()}


def _mark_executed(path: str) -> None:
    Path(path).write_text("executed")


class _Payload:
    """Unpickling this would run `_mark_executed`: a stand-in for a malicious checkpoint."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return _mark_executed, (self.marker,)


def test_export_read_load_round_trip_keeps_every_tensor(tmp_path):
    source = build_backbone("resnet10")
    with torch.no_grad():
        for tensor in source.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn_like(tensor))
    path = export_backbone(source, tmp_path / "stage", {**META, "extra": "kept"})

    assert path == tmp_path / "stage" / "backbone.pt"
    assert sorted(p.name for p in path.parent.iterdir()) == ["backbone.json", "backbone.pt"]
    state, meta = read_backbone_state(path)
    assert meta == {**META, "extra": "kept", "s3l_version": s3l.__version__}
    assert json.loads((tmp_path / "stage" / "backbone.json").read_text()) == meta

    target = build_backbone("resnet10")
    load_backbone(target, state, source=str(path))
    expected = source.state_dict()
    assert target.state_dict().keys() == expected.keys()
    for key, value in target.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_export_requires_the_contract_meta(tmp_path):
    with pytest.raises(ValueError, match="config_hash"):
        export_backbone(
            build_backbone("resnet10"), tmp_path, {k: v for k, v in META.items() if k != "config_hash"}
        )


def test_original_moco_checkpoint_loads_the_query_encoder(tmp_path):
    query, key_encoder = _randomized("resnet18"), _randomized("resnet18")
    state_dict = {f"module.encoder_q.{k}": v for k, v in query.items()}
    state_dict["module.encoder_q.fc.0.weight"] = torch.randn(512, 512)
    state_dict["module.encoder_q.fc.2.weight"] = torch.randn(128, 512)
    state_dict.update({f"module.encoder_k.{k}": v for k, v in key_encoder.items()})
    state_dict["module.queue"] = torch.randn(128, 64)
    state_dict["module.queue_ptr"] = torch.tensor([0])
    path = tmp_path / "checkpoint_0199.pth.tar"
    torch.save({"epoch": 200, "arch": "resnet18", "state_dict": state_dict, "optimizer": {"state": {}}}, path)

    state, meta = read_backbone_state(path)
    assert meta == {"architecture": "resnet18"}
    backbone = build_backbone("resnet18")
    load_backbone(backbone, state, source=str(path))
    loaded = backbone.state_dict()
    assert torch.equal(loaded["conv1.weight"], query["conv1.weight"])
    assert torch.equal(loaded["layer4.1.bn2.running_var"], query["layer4.1.bn2.running_var"])
    assert not torch.equal(loaded["conv1.weight"], key_encoder["conv1.weight"])
    assert all(torch.equal(loaded[k], v) for k, v in query.items())


def test_dataparallel_classifier_checkpoint_drops_fc(tmp_path):
    weights = _randomized("resnet10")
    state_dict = {f"module.{k}": v for k, v in weights.items()}
    state_dict.update({"module.fc.weight": torch.randn(200, 512), "module.fc.bias": torch.randn(200)})
    path = tmp_path / "model_best.pth.tar"
    torch.save(
        {"epoch": 10, "arch": "resnet10", "state_dict": state_dict, "best_acc1": torch.tensor(50.0)}, path
    )

    state, _ = read_backbone_state(path)
    assert not any(k.startswith("fc.") for k in state)
    backbone = build_backbone("resnet10")
    load_backbone(backbone, state, source=str(path))
    assert all(torch.equal(backbone.state_dict()[k], v) for k, v in weights.items())


@pytest.mark.parametrize(
    "prefix, extra",
    [
        ("encoder_q.", {"encoder_q.fc.0.weight": torch.randn(4, 512)}),  # original BYOL
        ("encoder_q.backbone.", {"encoder_q.head.0.weight": torch.randn(4, 512), "queue": torch.randn(4, 8)}),
        ("backbone.", {"fc.weight": torch.randn(3, 512), "fc.bias": torch.randn(3)}),  # our Classifier
        ("", {"fc.weight": torch.randn(1000, 512), "fc.bias": torch.randn(1000)}),  # bare torchvision
    ],
)
def test_other_formats_map_to_torchvision_keys(tmp_path, prefix, extra):
    weights = _randomized("resnet10")
    state_dict = {f"{prefix}{k}": v for k, v in weights.items()} | extra
    path = tmp_path / "weights.ckpt"
    torch.save({"state_dict": state_dict} if prefix else state_dict, path)

    state, meta = read_backbone_state(path)
    assert meta == {}
    assert state.keys() == weights.keys()
    assert all(torch.equal(state[k], v) for k, v in weights.items())


def test_custom_resnet50_grows_into_resnet50_with_fresh_layer4(tmp_path):
    custom = build_backbone("custom_resnet50")
    path = export_backbone(custom, tmp_path, {**META, "architecture": "custom_resnet50"})
    state, meta = read_backbone_state(path)
    full = build_backbone("resnet50")
    layer4_before = {k: v.clone() for k, v in full.state_dict().items() if k.startswith("layer4.")}

    load_backbone(full, state, source=str(path), meta=meta, allow_missing_prefixes=("layer4.",))
    after = full.state_dict()
    assert all(torch.equal(after[k], v) for k, v in layer4_before.items())
    assert torch.equal(after["layer3.5.conv3.weight"], custom.state_dict()["layer3.5.conv3.weight"])

    with pytest.raises(S3LError, match="missing keys \\(layer4"):
        load_backbone(build_backbone("resnet50"), state, source=str(path), meta=meta)


def test_resnet50_checkpoint_into_resnet18_names_the_file(tmp_path):
    path = export_backbone(build_backbone("resnet50"), tmp_path, {**META, "architecture": "resnet50"})
    state, meta = read_backbone_state(path)
    with pytest.raises(S3LError) as error:
        load_backbone(build_backbone("resnet18"), state, source=str(path), meta=meta)
    message = str(error.value)
    assert str(path) in message and "written for architecture resnet50" in message
    # resnet18's keys all exist in resnet50 (with other shapes); resnet50 adds conv3, layer*.0.downsample, ...
    assert "unexpected keys (layer1.0.conv3.weight" in message and "shape mismatches" in message
    assert "\n" not in message


def test_missing_file_is_named(tmp_path):
    path = tmp_path / "nowhere" / "backbone.pt"
    with pytest.raises(S3LError, match=f"{path} does not exist"):
        read_backbone_state(path)


def test_truncated_checkpoint_is_refused_with_the_file_name(tmp_path):
    full = tmp_path / "full.pt"
    torch.save(build_backbone("resnet10").state_dict(), full)
    truncated = tmp_path / "backbone.pt"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(S3LError, match=f"cannot read checkpoint {truncated}: expected a backbone.pt"):
        read_backbone_state(truncated)


def test_text_file_is_refused_with_the_file_name(tmp_path):
    path = tmp_path / "notes.ckpt"
    path.write_text("these are not weights\n")
    with pytest.raises(S3LError, match=f"cannot read checkpoint {path}.*point at the stage's backbone.pt"):
        read_backbone_state(path)


def test_pickled_object_is_refused_without_running_its_code(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth.tar"
    torch.save(
        {"state_dict": build_backbone("resnet10").state_dict(), "payload": _Payload(str(marker))}, path
    )
    with pytest.raises(S3LError, match=f"cannot read checkpoint {path}"):
        read_backbone_state(path)
    assert not marker.exists()
