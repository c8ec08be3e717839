import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from s3l.checkpoints import export_backbone
from s3l.errors import S3LError
from s3l.export import detectron2_key, export, main
from s3l.models.resnet import build_backbone
from tests.test_checkpoints import META as CHECKPOINT_META

ROOT = Path(__file__).resolve().parents[1]
META = {**CHECKPOINT_META, "architecture": None}
# Written out by hand from MoCo's detection/convert-pretrain-to-detectron2.py, independently of s3l.export.
DETECTRON2_NAMES = {
    "conv1.weight": "stem.conv1.weight",
    "bn1.weight": "stem.conv1.norm.weight",
    "bn1.running_var": "stem.conv1.norm.running_var",
    "layer1.0.conv1.weight": "res2.0.conv1.weight",
    "layer1.0.bn3.bias": "res2.0.conv3.norm.bias",
    "layer1.0.downsample.0.weight": "res2.0.shortcut.weight",
    "layer1.0.downsample.1.running_mean": "res2.0.shortcut.norm.running_mean",
    "layer3.5.bn2.num_batches_tracked": "res4.5.conv2.norm.num_batches_tracked",
    "layer4.2.conv3.weight": "res5.2.conv3.weight",
}


def _random_backbone(name: str, stem: str = "imagenet") -> nn.Module:
    """A backbone in eval mode with random BN parameters and statistics (convs keep their random init)."""
    backbone = build_backbone(name, stem)
    with torch.no_grad():
        for tensor in backbone.state_dict().values():
            if tensor.is_floating_point() and tensor.dim() == 1:
                tensor.copy_(torch.rand_like(tensor) + 0.5)  # positive, so valid variances
    return backbone.eval()


def _ours(tmp: Path, name: str, stem: str = "imagenet") -> tuple[Path, nn.Module]:
    backbone = _random_backbone(name, stem)
    return export_backbone(backbone, tmp / name, {**META, "architecture": name}), backbone


def _original_moco(tmp: Path, name: str) -> tuple[Path, nn.Module]:
    """The original MoCo layout (DDP query and key encoders, MLP head, queue), as in test_checkpoints."""
    query = _random_backbone(name)
    state = {f"module.encoder_q.{k}": v for k, v in query.state_dict().items()}
    state |= {"module.encoder_q.fc.0.weight": torch.randn(8, 4),
              "module.encoder_q.fc.2.weight": torch.randn(4, 8)}
    state |= {f"module.encoder_k.{k}": -v for k, v in query.state_dict().items()}
    state |= {"module.queue": torch.randn(4, 16), "module.queue_ptr": torch.tensor([0])}
    path = tmp / f"moco_{name}.pth.tar"
    torch.save({"epoch": 200, "arch": name, "state_dict": state, "optimizer": {"state": {}}}, path)
    return path, query


@pytest.fixture(scope="module")
def sources(module_tmp) -> dict[tuple[str, str], tuple[Path, nn.Module]]:
    """(layout, architecture) -> (checkpoint file, the backbone it holds), written once for the module."""
    tmp = module_tmp / "sources"
    tmp.mkdir()
    return {
        (layout, name): write(tmp, name)
        for layout, write in (("ours", _ours), ("moco", _original_moco))
        for name in ("resnet18", "resnet50")
    }


SOURCES = [(layout, name) for layout in ("ours", "moco") for name in ("resnet18", "resnet50")]


def test_detectron2_key_follows_mocos_renaming():
    assert {key: detectron2_key(key) for key in DETECTRON2_NAMES} == DETECTRON2_NAMES


@pytest.mark.parametrize("source", SOURCES, ids="-".join)
def test_torchvision_export_maps_every_tensor_once_and_lacks_only_fc(sources, tmp_path, source):
    path, backbone = sources[source]
    out = tmp_path / "tv.pth"
    export(path, "torchvision", out)

    exported = torch.load(out, weights_only=True)
    ours = backbone.state_dict()
    assert exported.keys() == ours.keys()  # the identity on names: our keys are torchvision's
    assert all(torch.equal(exported[key], value) for key, value in ours.items())
    model = getattr(torchvision.models, source[1])()
    result = model.load_state_dict(exported, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and result.unexpected_keys == []


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_torchvision_model_with_fc_loads_strictly_and_computes_our_features(sources, tmp_path, name):
    path, backbone = sources["moco", name]
    out = tmp_path / "tv.pth"
    line = export(path, "torchvision", out, with_fc=True)

    assert line.startswith(f"wrote {out}: {name} in torchvision keys with torchvision's fresh 1000-class fc")
    model = getattr(torchvision.models, name)()
    model.load_state_dict(torch.load(out, weights_only=True), strict=True)
    fc, model.fc = model.fc, nn.Identity()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = model.eval()(images)
        assert torch.equal(features, backbone(images))
    assert fc.weight.shape == (1000, backbone.feature_dim)


def test_classifier_checkpoint_keeps_its_own_fc(tmp_path):
    backbone = _random_backbone("resnet18")
    fc = nn.Linear(512, 3)
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    state |= {"fc.weight": fc.weight.detach(), "fc.bias": fc.bias.detach()}
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": state, "epoch": 3}, path)

    line = export(path, with_fc=True)
    out = tmp_path / "last_torchvision.pth"
    assert line.startswith(f"wrote {out}: resnet18 in torchvision keys with its own 3-class fc")
    assert "model = torchvision.models.resnet18(num_classes=3);" in line
    model = torchvision.models.resnet18(num_classes=3)
    model.load_state_dict(torch.load(out, weights_only=True), strict=True)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(images), fc(backbone(images)))


def test_resnet50_export_has_timms_key_names(sources, tmp_path):
    """timm's resnet50 names its tensors as torchvision does; the expected set is spelled out here."""
    export(sources["ours", "resnet50"][0], "torchvision", tmp_path / "tv.pth", with_fc=True)
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    expected = {"conv1.weight", "fc.weight", "fc.bias"} | {f"bn1.{p}" for p in bn}
    for stage, blocks in enumerate((3, 4, 6, 3), start=1):
        for block in range(blocks):
            at = f"layer{stage}.{block}"
            expected |= {f"{at}.conv{i}.weight" for i in (1, 2, 3)}
            expected |= {f"{at}.bn{i}.{p}" for i in (1, 2, 3) for p in bn}
        expected |= {f"layer{stage}.0.downsample.0.weight"} | {f"layer{stage}.0.downsample.1.{p}" for p in bn}
    assert set(torch.load(tmp_path / "tv.pth", weights_only=True)) == expected


def test_timm_resnet50_loads_the_export_strictly(sources, tmp_path):
    timm = pytest.importorskip("timm")
    export(sources["ours", "resnet50"][0], "torchvision", tmp_path / "tv.pth", with_fc=True)
    model = timm.create_model("resnet50", pretrained=False)
    model.load_state_dict(torch.load(tmp_path / "tv.pth", weights_only=True), strict=True)


@pytest.mark.parametrize("source", SOURCES, ids="-".join)
def test_detectron2_export_maps_every_tensor_once_and_round_trips(sources, tmp_path, source):
    path, backbone = sources[source]
    out = tmp_path / "d2.pkl"
    export(path, "detectron2", out)

    with out.open("rb") as file:
        checkpoint = pickle.load(file)
    assert checkpoint["__author__"] == "S3L" and checkpoint["matching_heuristics"] is True
    model, ours = checkpoint["model"], backbone.state_dict()
    renamed = {detectron2_key(key): key for key in ours}
    assert len(renamed) == len(ours) and renamed.keys() == model.keys()  # a bijection
    assert all(isinstance(value, np.ndarray) for value in model.values())
    assert all(torch.equal(torch.from_numpy(model[new]), ours[old]) for new, old in renamed.items())
    spelled_out = {new: ours[old] for old, new in DETECTRON2_NAMES.items() if old in ours}
    assert len(spelled_out) == {"resnet18": 4, "resnet50": len(DETECTRON2_NAMES)}[source[1]]
    assert all(torch.equal(torch.from_numpy(model[new]), value) for new, value in spelled_out.items())


@pytest.mark.parametrize("fmt", ["torchvision", "detectron2"])
def test_cifar_stem_is_refused_in_one_line(tmp_path, fmt):
    path, _ = _ours(tmp_path, "resnet18", stem="cifar")
    with pytest.raises(S3LError) as error:
        export(path, fmt)
    assert "CIFAR stem (3x3 conv1, no max-pool)" in str(error.value) and "\n" not in str(error.value)
    assert not list(path.parent.glob("backbone_*"))


def test_custom_resnet_needs_allow_missing_conv5_and_then_lacks_only_layer4_and_fc(tmp_path):
    path, backbone = _ours(tmp_path, "custom_resnet18")
    with pytest.raises(S3LError, match="no layer4 \\(conv5\\).*--allow-missing-conv5") as error:
        export(path)
    assert "\n" not in str(error.value)

    line = export(path, allow_missing_conv5=True)
    out = path.with_name("backbone_torchvision.pth")
    assert line.startswith(f"wrote {out}: custom_resnet18 backbone")
    assert "strict=False) (missing: layer4.*, fc.weight, fc.bias)" in line
    model = torchvision.models.resnet18()
    result = model.load_state_dict(torch.load(out, weights_only=True), strict=False)
    assert result.unexpected_keys == []
    assert {key for key in result.missing_keys if not key.startswith("layer4.")} == {"fc.weight", "fc.bias"}
    assert torch.equal(model.layer3[1].bn2.running_var, backbone.layer3[1].bn2.running_var)


def test_resnet10_exports_as_a_one_block_torchvision_resnet_but_not_to_detectron2(tmp_path):
    path, backbone = _ours(tmp_path, "resnet10")
    line = export(path)
    assert "ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1])" in line
    model = ResNet(BasicBlock, [1, 1, 1, 1])
    exported = torch.load(path.with_name("backbone_torchvision.pth"), weights_only=True)
    result = model.load_state_dict(exported, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and result.unexpected_keys == []
    with pytest.raises(S3LError, match="detectron2 has no resnet10"):
        export(path, "detectron2")


def test_original_dataparallel_classifier_keeps_its_fc_and_names_its_class_count(tmp_path):
    backbone, fc = _random_backbone("resnet10"), nn.Linear(512, 10)
    state = {f"module.{k}": v for k, v in (backbone.state_dict() | fc.state_dict(prefix="fc.")).items()}
    torch.save({"epoch": 10, "arch": "resnet10", "state_dict": state}, tmp_path / "model_best.pth.tar")

    line = export(tmp_path / "model_best.pth.tar", with_fc=True)
    resnet = "torchvision.models.resnet"
    assert f"model = {resnet}.ResNet({resnet}.BasicBlock, [1, 1, 1, 1], num_classes=10); model.load" in line
    model = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10)
    model.load_state_dict(torch.load(tmp_path / "model_best_torchvision.pth", weights_only=True), strict=True)
    assert torch.equal(model.fc.weight, fc.weight)


def test_missing_batch_counters_are_filled_as_torchvision_has_them(tmp_path):
    backbone = _random_backbone("resnet18")
    state = {k: v for k, v in backbone.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pth")

    export(tmp_path / "old.pth", out=tmp_path / "tv.pth", with_fc=True)
    exported = torch.load(tmp_path / "tv.pth", weights_only=True)
    assert exported.keys() == torchvision.models.resnet18().state_dict().keys()
    assert exported["layer2.0.downsample.1.num_batches_tracked"] == 0


@pytest.fixture(scope="module")
def bad_inputs(module_tmp) -> Path:
    """A folder with a text file, an architecture we do not have, and a resnet10 stage's backbone."""
    folder = module_tmp / "bad_inputs"
    folder.mkdir()
    (folder / "notes.txt").write_text("not weights\n")
    torch.save(ResNet(Bottleneck, [2, 2, 2, 2]).state_dict(), folder / "resnet26.pth")
    export_backbone(build_backbone("resnet10"), folder, {**META, "architecture": "resnet10"})
    return folder


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["notes.txt"], "cannot read checkpoint"),
        (["resnet26.pth"], "fit none of our architectures"),
        (["backbone.pt", "--format", "onnx"], "invalid choice: 'onnx'"),
        (["backbone.pt", "--format", "detectron2", "--with-fc"], "--with-fc applies to --format torchvision"),
        (["backbone.pt", "--out", "backbone.pt"], "is the input checkpoint"),
    ],
)
def test_bad_input_is_one_line_with_exit_status_2(bad_inputs, monkeypatch, capsys, args, message):
    monkeypatch.chdir(bad_inputs)
    with pytest.raises(SystemExit) as exit_:  # argparse exits itself
        sys.exit(main(args))
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1


def test_command_line_writes_the_file_and_prints_one_line(sources, tmp_path):
    stage_dir = sources["ours", "resnet18"][0].parent
    out = tmp_path / "d2.pkl"
    command = [sys.executable, "-m", "s3l.export", str(stage_dir), "--format", "detectron2", f"--out={out}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        f"wrote {out}: resnet18 backbone in detectron2 keys; use it in an FPN config with MODEL.WEIGHTS {out}"
        " MODEL.RESNETS.DEPTH 18 MODEL.RESNETS.RES2_OUT_CHANNELS 64 (the shipped C4 configs need resnet50)\n"
    )
    with out.open("rb") as file:
        assert len(pickle.load(file)["model"]) == len(sources["ours", "resnet18"][1].state_dict())
