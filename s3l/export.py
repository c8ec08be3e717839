"""`python -m s3l.export CHECKPOINT`: a backbone we can read, as torchvision/timm or detectron2 weights.

The input is anything `s3l.checkpoints.read_backbone_state` reads: a stage directory or its backbone.pt, a
Lightning .ckpt, an original S3L/MoCo/BYOL checkpoint. The architecture and stem are recognised from the
weights themselves (their keys and shapes), not from a name stored beside them.

- `--format torchvision` (default): torchvision's ResNet keys, which timm's resnet18/resnet50 share. A
  pretrained backbone has no fc, so `load_state_dict(sd, strict=False)` reports exactly fc.weight and fc.bias
  missing; `--with-fc` adds one (the checkpoint's own classifier if it has one, else torchvision's default
  1000-class fc) so that a strict load works.
- `--format detectron2`: the renaming of MoCo's `detection/convert-pretrain-to-detectron2.py`, pickled with
  `matching_heuristics`, for `MODEL.WEIGHTS` with the configs in configs/detectron2/.
"""

import argparse
import pickle
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NoReturn

import torch
from torch import Tensor, nn
from torchvision.models.resnet import ResNet

from s3l.checkpoints import BACKBONE_FILE, read_backbone_state, write_atomically
from s3l.errors import S3LError
from s3l.models.resnet import ARCHITECTURES, STEMS, build_backbone, full_architecture

FORMATS = ("torchvision", "detectron2")
_SUFFIXES = {"torchvision": "pth", "detectron2": "pkl"}
# torchvision has no resnet10 constructor; its ResNet class with one BasicBlock per stage is exactly ours.
_TORCHVISION_MODELS = {
    "resnet10": ("torchvision.models.resnet.ResNet",
                 ("torchvision.models.resnet.BasicBlock", "[1, 1, 1, 1]")),
    "resnet18": ("torchvision.models.resnet18", ()),
    "resnet50": ("torchvision.models.resnet50", ()),
}
# detectron2 builds ResNets of depth 18, 34, 50, 101 and 152 only (MODEL.RESNETS.DEPTH).
_DETECTRON2_DEPTHS = {"resnet18": 18, "resnet50": 50}
_DEFAULT_CLASSES = 1000  # torchvision's default num_classes


def _on_meta(name: str, stem: str) -> ResNet:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        return build_backbone(name, stem)


def _shapes(state: Mapping[str, Tensor]) -> dict[str, tuple[int, ...]]:
    # BN counters are left out: older checkpoints lack them, and they tell no architecture apart.
    return {
        key: tuple(value.shape) for key, value in state.items() if not key.endswith("num_batches_tracked")
    }


def identify(state: Mapping[str, Tensor], source: Path) -> tuple[str, str]:
    """The (architecture, stem) of ours whose backbone has exactly these keys and shapes."""
    shapes = _shapes(state)
    for name in ARCHITECTURES:
        for stem in STEMS:
            if _shapes(_on_meta(name, stem).state_dict()) == shapes:
                return name, stem
    raise S3LError(
        f"checkpoint {source} holds {len(shapes)} backbone tensors that fit none of our architectures "
        f"({', '.join(ARCHITECTURES)}) with either stem: cannot tell which ResNet to export"
    )


def check_exportable(
    architecture: str, stem: str, fmt: str, *, allow_missing_conv5: bool, with_fc: bool
) -> None:
    """Refuse, in one line, a backbone the target library cannot build."""
    full = full_architecture(architecture)
    if stem == "cifar":
        raise S3LError(
            f"this {architecture} has the CIFAR stem (3x3 conv1, no max-pool): {fmt}'s ResNet has only the "
            "7x7/2 conv1 with max-pool, so it cannot take these weights"
        )
    if fmt == "detectron2" and full not in _DETECTRON2_DEPTHS:
        raise S3LError(
            f"detectron2 has no {full} (MODEL.RESNETS.DEPTH is 18, 34, 50, 101 or 152); "
            "use --format torchvision"
        )
    if full != architecture and not allow_missing_conv5:
        raise S3LError(
            f"this {architecture} has no layer4 (conv5), which {fmt}'s {full} expects: pass "
            "--allow-missing-conv5 to export it anyway (layer4 then keeps the target's fresh init)"
        )
    if full != architecture and with_fc:
        raise S3LError(f"--with-fc needs layer4, which this {architecture} lacks: leave --with-fc out")


def with_batch_counters(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """`state` plus every BatchNorm's `num_batches_tracked` (0 where absent), as torchvision has them."""
    counters = {
        key.removesuffix("running_mean") + "num_batches_tracked": torch.tensor(0)
        for key in state
        if key.endswith("running_mean")
    }
    return {**counters, **state}


def classifier_fc(source: Path, feature_dim: int) -> dict[str, Tensor] | None:
    """The checkpoint's own classifier fc (our Classifier's, a DataParallel or bare torchvision one), if any.

    SSL heads (`head.*`, MoCo's `encoder_q.fc.*`) are projections, not classifiers, and are never taken.
    """
    # read_backbone_state has already read this file with weights_only, so it loads; read again for the fc
    # only when asked, as s3l.checkpoints drops it by contract.
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict", checkpoint)
    for prefix in ("", "module."):
        weight, bias = state.get(f"{prefix}fc.weight"), state.get(f"{prefix}fc.bias")
        if isinstance(weight, Tensor) and isinstance(bias, Tensor):
            if weight.ndim != 2 or weight.shape[1] != feature_dim or bias.shape != weight.shape[:1]:
                raise S3LError(
                    f"checkpoint {source} has an fc of shape {tuple(weight.shape)} that does not fit the "
                    f"backbone's {feature_dim} features"
                )
            return {"fc.weight": weight, "fc.bias": bias}
    return None


def default_fc(feature_dim: int) -> dict[str, Tensor]:
    """torchvision's fc as a fresh model has it (its ResNet leaves fc at nn.Linear's default init)."""
    fc = nn.Linear(feature_dim, _DEFAULT_CLASSES)
    return {"fc.weight": fc.weight.detach(), "fc.bias": fc.bias.detach()}


def detectron2_key(key: str) -> str:
    """MoCo's renaming to detectron2: layerN -> res(N+1), other top-level layers under `stem.`,
    bnK -> convK.norm, downsample.0 -> shortcut, downsample.1 -> shortcut.norm."""
    stage = re.fullmatch(r"layer([1-4])\.(.+)", key)
    head, rest = (f"res{int(stage[1]) + 1}.", stage[2]) if stage else ("stem.", key)
    rest = re.sub(r"\bbn([1-3])\b", r"conv\1.norm", rest)
    return head + rest.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")


def detectron2_checkpoint(state: Mapping[str, Tensor]) -> dict:
    """What detectron2's checkpointer reads from a .pkl: numpy arrays, matched to its model by key names."""
    model = {detectron2_key(key): value.numpy() for key, value in state.items()}
    return {"model": model, "__author__": "S3L", "matching_heuristics": True}


def default_out(source: Path, fmt: str) -> Path:
    """Beside the input: backbone.pt -> backbone_torchvision.pth / backbone_detectron2.pkl."""
    return source.with_name(f"{source.name.split('.')[0]}_{fmt}.{_SUFFIXES[fmt]}")


def _torchvision_model(architecture: str, classes: int = _DEFAULT_CLASSES) -> str:
    function, args = _TORCHVISION_MODELS[full_architecture(architecture)]
    num_classes = () if classes == _DEFAULT_CLASSES else (f"num_classes={classes}",)
    return f"{function}({', '.join((*args, *num_classes))})"


def _usage_without_fc(architecture: str, out: Path) -> str:
    missing = "fc.weight, fc.bias"
    if full_architecture(architecture) != architecture:
        missing = f"layer4.*, {missing}"
    model = _torchvision_model(architecture)
    return (
        f"{architecture} backbone in torchvision keys, no fc; load: model = {model}; "
        f"model.load_state_dict(torch.load('{out}'), strict=False) (missing: {missing})"
    )


def _usage_with_fc(architecture: str, out: Path, fc: Mapping[str, Tensor], own: bool) -> str:
    classes = fc["fc.weight"].shape[0]
    # A stage's backbone.pt never holds the classifier; its Lightning checkpoint does.
    which = f"its own {classes}-class fc" if own else (
        "torchvision's fresh 1000-class fc (a fine-tuned stage's own is in its checkpoints/last.ckpt)"
    )
    return (
        f"{architecture} in torchvision keys with {which}; load: model = "
        f"{_torchvision_model(architecture, classes)}; model.load_state_dict(torch.load('{out}'))"
    )


def _detectron2_usage(architecture: str, out: Path) -> str:
    full = full_architecture(architecture)
    what = f"{architecture} backbone in detectron2 keys" + ("" if full == architecture else " (no res5)")
    if _DETECTRON2_DEPTHS[full] == 50:
        config = "configs/detectron2/pascal_voc_R_50_C4_24k_moco.yaml (or coco_R_50_C4_2x_moco.yaml)"
        return f"{what}; train: train_net.py --config-file {config} MODEL.WEIGHTS {out}"
    # detectron2's C4 models put res5 (bottleneck blocks) in the ROI head, so an R18 needs an FPN config.
    return (
        f"{what}; use it in an FPN config with MODEL.WEIGHTS {out} MODEL.RESNETS.DEPTH 18 "
        "MODEL.RESNETS.RES2_OUT_CHANNELS 64 (the shipped C4 configs need resnet50)"
    )


def _write(out: Path, write: Callable[[Path], None]) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(out, write)
    except OSError as error:
        raise S3LError(f"cannot write {out}: {error.strerror or error}") from None


def export(
    source: Path,
    fmt: str = "torchvision",
    out: Path | None = None,
    *,
    with_fc: bool = False,
    allow_missing_conv5: bool = False,
) -> str:
    """Convert the backbone in `source` to `fmt` and write it to `out` atomically.

    Returns one line saying what was written and how to load it; raises S3LError for what cannot be exported.
    """
    source = source / BACKBONE_FILE if source.is_dir() else source
    if fmt not in FORMATS:
        raise S3LError(f"unknown format '{fmt}': choose one of {', '.join(FORMATS)}")
    if with_fc and fmt != "torchvision":
        raise S3LError("--with-fc applies to --format torchvision only (detectron2 builds its own heads)")
    out = out or default_out(source, fmt)
    if out.resolve() == source.resolve():
        raise S3LError(f"--out {out} is the input checkpoint: choose another file")
    state, _ = read_backbone_state(source)
    architecture, stem = identify(state, source)
    check_exportable(architecture, stem, fmt, allow_missing_conv5=allow_missing_conv5, with_fc=with_fc)
    if fmt == "detectron2":
        payload = pickle.dumps(detectron2_checkpoint(state))
        _write(out, lambda tmp: tmp.write_bytes(payload))
        return f"wrote {out}: {_detectron2_usage(architecture, out)}"
    converted = with_batch_counters(state)
    usage = _usage_without_fc(architecture, out)
    if with_fc:
        feature_dim = _on_meta(architecture, stem).feature_dim
        own_fc = classifier_fc(source, feature_dim)
        fc = own_fc or default_fc(feature_dim)
        converted |= fc
        usage = _usage_with_fc(architecture, out, fc, own=own_fc is not None)
    _write(out, lambda tmp: torch.save(converted, tmp))
    return f"wrote {out}: {usage}"


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see python -m s3l.export --help)\n")


def main(argv: list[str] | None = None) -> int:
    """The command line: one line on success (stdout) or on error (stderr, exit status 2)."""
    parser = _OneLineParser(prog="python -m s3l.export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path,
                        help="a stage directory, backbone.pt, .ckpt or original S3L/MoCo checkpoint")
    parser.add_argument("--format", choices=FORMATS, default="torchvision", help="default: torchvision")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: beside the input (backbone_torchvision.pth, backbone_detectron2.pkl)")
    parser.add_argument("--with-fc", action="store_true",
                        help="add an fc for a strict load: the checkpoint's own, else torchvision's default")
    parser.add_argument("--allow-missing-conv5", action="store_true",
                        help="export a custom_resnet* (no layer4); load it with strict=False")
    args = parser.parse_args(argv)
    try:
        line = export(args.checkpoint, args.format, args.out,
                      with_fc=args.with_fc, allow_missing_conv5=args.allow_missing_conv5)
    except S3LError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
