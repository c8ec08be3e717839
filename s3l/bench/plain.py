"""The plain PyTorch loop the benchmark compares the project with: upstream main_moco_pretraining.py's step on
the same MoCoV2 object, and `python -m s3l.bench.plain` for whole short runs (the end-to-end section).

It imports no Hydra, no Lightning Trainer and none of the project's stage machinery, as a hand-written
training script would not, so its start-up is what such a script pays.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from s3l.methods.losses import infonce_logits
from s3l.methods.mocov2 import MoCoV2

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def mixed_precision(precision: str, device: torch.device) -> tuple:
    """(autocast context factory, GradScaler or None) matching Lightning's precision setting."""
    if precision == "32-true":
        return contextlib.nullcontext, None
    dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float16
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler


def plain_step(module: MoCoV2, optimizer: torch.optim.Optimizer, batch, device: torch.device, autocast,
               scaler) -> float:
    """One step the way upstream main_moco_pretraining.py takes it, on the same MoCoV2 object."""
    from s3l.bench.data import to_device

    (im_q, im_k), _ = to_device(batch, device)
    with autocast():
        q = F.normalize(module.encoder_q(im_q), dim=1)
        module.momentum_update_key_encoder()
        k = module.compute_keys(im_k)
        logits = infonce_logits(q, k, module.queue.clone().detach(), module.hparams.T)
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=device)
        loss = F.cross_entropy(logits, labels)
    module.dequeue_and_enqueue(k)
    optimizer.zero_grad()
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    (logits.argmax(dim=1) == 0).float().mean().item()  # upstream's per-step accuracy meter
    return loss.item()  # upstream's per-step loss meter


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m s3l.bench.plain",
                                     description="MoCo v2 pretraining on CUB as a plain PyTorch script")
    parser.add_argument("--root", required=True, help="CUB-200-2011 folder")
    parser.add_argument("--cache-dir", type=Path, required=True, help="where the resized caches live")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--K", type=int, default=192)
    parser.add_argument("--m", type=float, default=0.99)
    parser.add_argument("--knn-every", type=int, default=10, help="kNN of the backbone every N epochs (0: off)")
    parser.add_argument("--out", type=Path, required=True, help="where the final weights and a summary go")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Persistent workers, the same views and cache as the project (`dataset.cache=true`), SGD with the cosine
    per epoch, the same kNN evaluation at the same epochs, the final weights saved once."""
    from s3l.callbacks.knn import embed, weighted_knn_predict
    from s3l.data.cache import CachedImages, build_resized_cache, views_short_side
    from s3l.data.datamodule import Transformed, pretrain_transform
    from s3l.data.datasets import CUB200
    from s3l.data.transforms import eval_transform
    from s3l.data.views import view_specs
    from s3l.optim import build_sgd

    args = parse_args(argv)
    start = time.perf_counter()
    torch.manual_seed(0)
    views = view_specs(OmegaConf.load(CONFIGS / "augmentation" / "mocov2.yaml"))
    train = CUB200(args.root, "train")
    test = CUB200(args.root, "test")
    cached = CachedImages(build_resized_cache(
        train, views_short_side(args.resolution, views), args.cache_dir))
    transform, collate = pretrain_transform(args.resolution, views, fast=True)
    loader = DataLoader(Transformed(cached, transform), batch_size=args.batch, shuffle=True, drop_last=True,
                        num_workers=args.workers, collate_fn=collate, persistent_workers=args.workers > 0)
    knn_loaders = [DataLoader(Transformed(split, eval_transform(args.resolution)), batch_size=args.batch,
                              num_workers=args.workers, persistent_workers=args.workers > 0)
                   for split in (train, test)]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    lr = 0.03  # configs/method/mocov2.yaml
    model = MoCoV2(dim=128, K=args.K, m=args.m, T=0.2, mlp=True, architecture=args.arch, stem="imagenet",
                   bn_splits=4, lr=lr, momentum=0.9, weight_decay=1e-4, lr_schedule="cosine_epoch").to(device)
    optimizer = build_sgd(model.encoder_q.parameters(), lr, 0.9, 1e-4)
    autocast, scaler = mixed_precision("32-true", device)
    knn = []
    for epoch in range(args.epochs):
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * epoch / args.epochs))
        model.train()
        for batch in loader:
            plain_step(model, optimizer, batch, device, autocast, scaler)
        if args.knn_every and ((epoch + 1) % args.knn_every == 0 or epoch + 1 == args.epochs):
            model.eval()
            (train_x, train_y), (test_x, test_y) = (embed(model.backbone, dl, device) for dl in knn_loaders)
            predicted = weighted_knn_predict(train_x, train_y, test_x, len(train.classes), 20, 0.1)
            knn.append((predicted == test_y).float().mean().item())
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(model.backbone.state_dict(), args.out / "backbone.pt")
    summary = {"in_process_s": time.perf_counter() - start, "knn_top1": knn,
               "images": args.epochs * len(loader) * args.batch}
    (args.out / "plain.json").write_text(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
