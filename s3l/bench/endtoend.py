"""The end-to-end section: whole short runs, as a user starts them, against a plain PyTorch script.

Steady-state windows hide what small data makes large: process start-up, the epoch boundaries (workers,
samplers), checkpoints and the kNN monitor. Here both contenders run as fresh processes for `--e2e-epochs`
epochs of MoCo v2 on the same resized cache, with the same views, batch, workers and kNN epochs, and the whole
process is timed: `python train.py stage=pretrain ...` with its defaults (checkpoints, metrics, results.json),
and `python -m s3l.bench.plain` (persistent workers, final weights saved once).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def queue_length(images: int, batch: int) -> int:
    """The largest MoCo queue that is a multiple of the batch and shorter than the images outside a batch
    (what `MoCoV2.check_run` allows), so a small dataset can run MoCo v2 at all."""
    return batch * max(1, (images - batch - 1) // batch)


def commands(args: argparse.Namespace, images: int, cache_dir: Path, out: Path) -> dict[str, list[str]]:
    arch, resolution, K = args.archs[0], args.resolutions[0], queue_length(images, args.batch)
    project = [
        sys.executable, str(ROOT / "train.py"), "stage=pretrain", "experiment=cub_mocov2",
        f"dataset.root={args.root}", f"architecture={arch}", "architecture.stem=imagenet",  # the plain script's
        f"resolution={resolution}",
        f"method.batch_size={args.batch}", f"method.epochs={args.e2e_epochs}", f"method.K={K}", "method.m=0.99",
        "dataset.cache=true", f"dataset.cache_dir={cache_dir}", f"dataset.num_workers={args.workers}",
        f"stage.knn.every_n_epochs={args.e2e_knn_every}", f"trainer.precision={args.precision}",
        f"paths.log_dir={out / 'project'}", "callbacks.progress_bar=none", "print_config=false", "resume=false",
    ]
    plain = [
        sys.executable, "-m", "s3l.bench.plain", "--root", str(args.root), "--cache-dir", str(cache_dir),
        "--arch", arch, "--resolution", str(resolution), "--batch", str(args.batch),
        "--epochs", str(args.e2e_epochs), "--workers", str(args.workers), "--K", str(K), "--m", "0.99",
        "--knn-every", str(args.e2e_knn_every), "--out", str(out / "plain"),
    ]
    return {"plain": plain, "project": project}


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed:\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}")
    return seconds


def bench_endtoend(args: argparse.Namespace, images: int, scratch: Path) -> dict:
    """Wall-clock seconds of each whole process (median over --repeats runs in alternating order)."""
    out = scratch / "e2e"
    runs = commands(args, images, scratch / "cache", out)
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for repeat in range(args.repeats):
        for name in (list(runs) if repeat % 2 == 0 else list(runs)[::-1]):
            seconds[name].append(timed(runs[name]))
            print(f"e2e {name:>7}: {seconds[name][-1]:6.1f} s ({args.e2e_epochs} epochs)", flush=True)
    results = max((out / "project").glob("*/*/results.json"), key=lambda path: path.stat().st_mtime)  # the last run
    stage = json.loads(results.read_text())["stages"][0]
    plain = json.loads((out / "plain" / "plain.json").read_text())
    plain_s, project_s = (statistics.median(seconds[name]) for name in ("plain", "project"))
    return {"arch": args.archs[0], "resolution": args.resolutions[0], "epochs": args.e2e_epochs,
            "images_per_epoch": plain["images"] // args.e2e_epochs, "K": queue_length(images, args.batch),
            "knn_every": args.e2e_knn_every, "plain_s": plain_s, "project_s": project_s,
            "plain_runs_s": seconds["plain"], "project_runs_s": seconds["project"],
            "speed_ratio": plain_s / project_s, "project_stage_wall_s": stage["cost"]["wall_clock_s"],
            "plain_in_process_s": plain["in_process_s"],
            "knn_top1": {"plain": plain["knn_top1"][-1:], "project": [stage["metrics"].get("knn_top1")]},
            "commands": {name: printable(cmd) for name, cmd in runs.items()}}


def printable(cmd: list[str]) -> str:
    """The command as one would type it in the repository."""
    return " ".join(["python", *("train.py" if part == str(ROOT / "train.py") else part for part in cmd[1:])])
