"""The checkpoint contract between stages: export a backbone, read any supported checkpoint, load it strictly.

A stage hands the next one `backbone.pt` (a plain state dict with torchvision ResNet keys) and `backbone.json`
(what it is). `read_backbone_state` also reads our Lightning checkpoints and the original code's formats
(upstream-s3l.md §2.2, "Pretrained key handling"): the MoCo query encoder (`module.encoder_q.*`), a
DataParallel classifier (`module.*`), BYOL (`encoder_q.*`) and a bare torchvision state dict. As upstream,
the fc / projection head is always dropped: every downstream stage starts with a fresh classifier.
Unlike upstream, loading is strict: a checkpoint that does not fit is an error, not a printed warning.
"""

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

import s3l
from s3l.errors import S3LError

BACKBONE_FILE = "backbone.pt"
META_FILE = "backbone.json"
REQUIRED_META = ("architecture", "resolution", "stage", "method", "dataset", "epochs", "config_hash")
EXPECTED_FORMATS = "a backbone.pt, a Lightning .ckpt or an original S3L/MoCo checkpoint with a state_dict"

# Checked in order; the first prefix that any key carries decides the format, and only its keys are kept.
# Our own Lightning checkpoints name their backbone's prefix themselves (`backbone_prefix`, written by
# s3l.methods.base.SSLMethod); the list covers the other formats.
_BACKBONE_PREFIXES = (
    "module.encoder_q.",  # original MoCo (DDP): drops module.encoder_k.*, module.queue, module.queue_ptr
    "encoder_q.backbone.",  # our MoCo LightningModule of s3l 0.1, before backbone_prefix was recorded
    "encoder_q.",  # original BYOL
    "backbone.",  # our Classifier LightningModule
    "module.",  # original DataParallel classifier, e.g. the conv5 warm-up output
)


def write_atomically(path: Path, write: Callable[[Path], None], keep_previous: Path | None = None) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it into place.

    With `keep_previous`, the file being replaced is kept under that name (a hard link, so `path` never
    disappears), for a fallback when the new file turns out unreadable.
    """
    # A crash mid-write must never leave a half-written file under the final name (resume trusts it). What a
    # kill leaves is a `.<name>.*.tmp` file, which the next run removes once it holds the run lock.
    tmp = _temporary_beside(path)
    try:
        write(tmp)
        if keep_previous is not None and path.is_file():
            _keep_as(path, keep_previous)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _temporary_beside(path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return Path(tmp)


def _keep_as(path: Path, previous: Path) -> None:
    link = _temporary_beside(previous)
    link.unlink()
    try:
        os.link(path, link)
    except OSError:  # a file system without hard links: move it (path is briefly absent)
        os.replace(path, previous)
        return
    os.replace(link, previous)


def export_backbone(backbone: nn.Module, stage_dir: Path, meta: dict) -> Path:
    """Write `stage_dir/backbone.pt` (plain tensors) and `stage_dir/backbone.json`; return the `.pt` path.

    `meta` must hold `REQUIRED_META` (values may be None where they do not apply); `s3l_version` is added.
    """
    missing = [key for key in REQUIRED_META if key not in meta]
    if missing:
        raise ValueError(f"export_backbone meta lacks {missing}")
    stage_dir = Path(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    # clone(): a saved view would drag its whole underlying storage into the file.
    state = {key: value.detach().cpu().clone() for key, value in backbone.state_dict().items()}
    text = json.dumps({**meta, "s3l_version": s3l.__version__}, indent=2, sort_keys=True) + "\n"
    weights_path, meta_path = stage_dir / BACKBONE_FILE, stage_dir / META_FILE
    write_atomically(weights_path, lambda tmp: torch.save(state, tmp))
    write_atomically(meta_path, lambda tmp: tmp.write_text(text))
    return weights_path


def _load_safely(path: Path) -> object:
    if not path.is_file():
        raise S3LError(f"checkpoint {path} does not exist: point at {EXPECTED_FORMATS}")
    try:
        # weights_only: a checkpoint is data, never code to execute.
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        hint = (
            "; for our own runs, point at the stage's backbone.pt instead" if path.suffix == ".ckpt" else ""
        )
        raise S3LError(
            f"cannot read checkpoint {path}: expected {EXPECTED_FORMATS} ({reason}){hint}"
        ) from None


def _read_meta(path: Path, checkpoint: Mapping) -> dict:
    meta_path = path.with_name(META_FILE)
    if meta_path.is_file():
        return json.loads(meta_path.read_text())
    # The original scripts store the architecture name beside the weights.
    if isinstance(checkpoint.get("arch"), str):
        return {"architecture": checkpoint["arch"]}
    return {}


def backbone_keys(state: Mapping[str, Tensor], prefix: str | None = None) -> dict[str, Tensor]:
    """Map a checkpoint's state dict to torchvision ResNet backbone keys; drop fc, heads, key encoder, queue.

    `prefix`: where the backbone sits, when the checkpoint says so; else the first known format that matches.
    """
    if prefix is None:
        prefix = next((p for p in _BACKBONE_PREFIXES if any(key.startswith(p) for key in state)), "")
    mapped = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    return {key: value for key, value in mapped.items() if not key.startswith("fc.")}


def read_backbone_state(path: str | Path) -> tuple[dict[str, Tensor], dict]:
    """Read backbone weights (torchvision ResNet keys, fc dropped) and their meta from any supported checkpoint."""
    path = Path(path)
    checkpoint = _load_safely(path)
    if not isinstance(checkpoint, Mapping):
        raise S3LError(f"checkpoint {path} holds a {type(checkpoint).__name__}: expected {EXPECTED_FORMATS}")
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, Mapping):
        raise S3LError(f"checkpoint {path} has a state_dict that is not a dict: expected {EXPECTED_FORMATS}")
    prefix = checkpoint.get("backbone_prefix") if "state_dict" in checkpoint else None
    prefix = prefix if isinstance(prefix, str) else None
    weights = {key: value for key, value in backbone_keys(state, prefix).items() if isinstance(value, Tensor)}
    if not weights:
        raise S3LError(
            f"checkpoint {path} holds no backbone weights (no conv1/layer* tensors): expected {EXPECTED_FORMATS}"
        )
    return weights, _read_meta(path, checkpoint)


def _preview(keys: list[str], count: int = 3) -> str:
    more = ", ..." if len(keys) > count else ""
    return ", ".join(keys[:count]) + more


def load_backbone(
    backbone: nn.Module,
    state: Mapping[str, Tensor],
    *,
    source: str,
    meta: Mapping | None = None,
    allow_missing_prefixes: tuple[str, ...] = (),
) -> None:
    """Load `state` into `backbone` strictly; raise S3LError naming `source` if anything does not fit.

    Keys under `allow_missing_prefixes` may be absent and keep their fresh init: the conv5 warm-up passes
    `("layer4.",)` to grow a custom_resnet50 checkpoint into a resnet50. BN `num_batches_tracked` counters
    may be absent too (older checkpoints lack them; they do not affect the forward pass).
    """
    expected = backbone.state_dict()
    missing = [
        key
        for key in expected
        if key not in state
        and not key.startswith(allow_missing_prefixes)
        and not key.endswith("num_batches_tracked")
    ]
    unexpected = [key for key in state if key not in expected]
    mismatched = [
        f"{key} {tuple(state[key].shape)} vs {tuple(expected[key].shape)}"
        for key in state
        if key in expected and state[key].shape != expected[key].shape
    ]
    if missing or unexpected or mismatched:
        problems = [
            f"{len(items)} {label} ({_preview(items)})"
            for label, items in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", mismatched),
            )
            if items
        ]
        target = getattr(backbone, "architecture", f"this {type(backbone).__name__} backbone")
        written_for = (meta or {}).get("architecture")
        origin = f"; it was written for architecture {written_for}" if written_for else ""
        raise S3LError(f"checkpoint {source} does not fit {target}: {', '.join(problems)}{origin}")
    backbone.load_state_dict(state, strict=False)
