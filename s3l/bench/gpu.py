"""`python -m s3l.bench.gpu` (`make bench-gpu`): the prepared one-GPU benchmark of the whole CUB recipe.

Measures, in one process and within `--budget-s` seconds (8 minutes by default):
- MoCo v2 ResNet-50 pretraining at 56, 112 and 224 px (batch 128, the recipe's) with each data path:
  `original` (JPEG decode + PIL views on 16 workers), `cache` (the resized cache, PIL views on the workers),
  `device` (the cache; views made on the GPU) and `resident` (`dataset.resident=true`: the cache held on the
  GPU, no workers); steady-state images/s, CUDA peak memory, and project / plain loop on the same data path
  (`lightning_run` and `plain_run` of `s3l.bench.training`, fed by `s3l.bench.data.pipeline`);
- fine-tuning at 224 (the Classifier, batch 64, mixup) with and without the resident path;
- the evaluation (forward) rate at 224 and 112 px, for the test split and the kNN monitor;
- the GPU busy fraction of a few 112 px pretraining steps (torch.profiler: union of kernel intervals over
  the window's wall time) on the resident path, or the device path where the resident one failed;
- a projection of the whole recipe's wall-clock from these rates (`s3l.bench.gpu_report`).

bf16-mixed, channels_last and cudnn.benchmark on a GPU; fp32 on a CPU. A run that fails is a row that says
why, and the benchmark goes on. Writes `<out>/bench.json` and `<out>/bench.md`, and rewrites the GPU section
of `--docs` (docs/benchmarks.md) between its `bench-gpu` markers. `--tiny` runs the same code on the CPU in
seconds (resnet10, 32 px, batch 8); `--from-json` rewrites the docs section from a finished run's bench.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import torch

from s3l.bench.cli import build_caches, machine
from s3l.bench.data import bench_device, window_marks, window_rates
from s3l.bench.gpu_report import docs_section, markdown, projection, rewrite_docs, targets
from s3l.bench.gpu_runs import forward_run, stage_run
from s3l.bench.training import isolated, pretrain_config
from s3l.data.datasets import CUB200
from s3l.data.resident import ResidentImages
from s3l.data.views import view_specs
from s3l.errors import S3LError

REPO = Path(__file__).resolve().parents[2]
# The CUB subset beside a developer's checkout, else the copy `make bench-gpu-data` puts inside the repo
# (git-ignored, so that it can be carried to a GPU machine, which gets the repo and nothing beside it).
ROOTS = (REPO.parent / "shared" / "datasets" / "cub_200_2011_10cls" / "CUB_200_2011",
         REPO / "bench_data" / "CUB_200_2011")
GPU = {"arch": "resnet50", "resolutions": [56, 112, 224], "recipe_resolution": 112, "batch": 128,
       "finetune_resolution": 224, "finetune_batch": 64, "workers": 16, "warmup": 32, "steps": 10,
       "windows": 3, "profile_steps": 5}
TINY = {"arch": "resnet10", "resolutions": [32], "recipe_resolution": 32, "batch": 8,
        "finetune_resolution": 32, "finetune_batch": 8, "workers": 2, "warmup": 1, "steps": 2,
        "windows": 2, "profile_steps": 2}
PRETRAIN_PATHS = ("original", "cache", "device", "resident")
FINETUNE_PATHS = ("original", "resident")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m s3l.bench.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=None,
                        help=f"CUB-200-2011 folder (default: the first that exists of {', '.join(map(str, ROOTS))})")
    parser.add_argument("--out", type=Path, default=Path("bench_results/gpu"))
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks.md",
                        help="markdown file whose bench-gpu section is rewritten")
    parser.add_argument("--tiny", action="store_true", help="the same code on the CPU in seconds (resnet10, 32 px)")
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="runs not started by then are rows marked skipped (the most important run first)")
    parser.add_argument("--from-json", type=Path, default=None,
                        help="measure nothing: rewrite --docs from this bench.json of an earlier run")
    args = parser.parse_args(argv)
    docs_section(args.docs)
    if args.from_json is None:
        args.root = find_root(args.root)
    return args


def find_root(root: Path | None) -> Path:
    """The given dataset folder, or the first default one that exists; one line if there is none."""
    candidates = [root] if root is not None else ROOTS
    found = next((path for path in candidates if (path / "images.txt").is_file()
                  or (path / "train").is_dir()), None)
    if found is None:
        raise S3LError(f"no CUB dataset at {' or '.join(map(str, candidates))}: pass --root, or run "
                       "`make bench-gpu-data` to copy the subset into the repo")
    return found


def bench_settings(args: argparse.Namespace, scratch: Path) -> argparse.Namespace:
    """What `s3l.bench.training`'s jobs read (`args`), plus this benchmark's sizes."""
    cuda = torch.cuda.is_available()
    sizes = TINY if args.tiny else GPU
    return argparse.Namespace(
        **sizes, root=str(args.root), augmentation="mocov2", precision="bf16-mixed" if cuda else "32-true",
        channels_last=cuda, compile=False, cudnn_benchmark=cuda, isolate=False, cache_dir=scratch / "cache",
        deadline=time.perf_counter() + args.budget_s, budget_s=args.budget_s, scratch=scratch)


def attempt(row: dict, run: Callable[[], dict], s: argparse.Namespace) -> dict:
    """One measurement into its row: images/s (median of the windows) and peak memory, or why not."""
    if time.perf_counter() > s.deadline:
        row["status"] = f"skipped: the {s.budget_s:.0f} s budget was spent"
    else:
        start = time.perf_counter()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        try:
            result = run()
            rates = window_rates(result["times"], s.steps, row["batch"])
            row.update(status="ok", images_per_s=statistics.median(rates), window_images_per_s=rates,
                       peak_memory_mb=result["peak_memory_mb"], **result.get("busy", {}))
        except Exception as err:  # one failing run (e.g. a path not built yet) must not lose the others
            row["status"] = "failed: " + " ".join(f"{type(err).__name__}: {err}".split())[:200]
        row["seconds"] = time.perf_counter() - start
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    print(describe(row), flush=True)
    return row


def describe(row: dict) -> str:
    """The one progress line of a run."""
    name = f"{row['stage']:>8} {row['resolution']:>4} px {row['data']:>8} {row.get('runner', ''):>7}"
    if row["status"] != "ok":
        return f"{name}: {row['status']}"
    busy = f", GPU busy {row['fraction']:.0%}" if row.get("fraction") is not None else ""
    return (f"{name}: {row['images_per_s']:8.1f} img/s, peak {row['peak_memory_mb']:.0f} MB{busy} "
            f"({row['seconds']:.0f} s)")


def pretrain_rows(s: argparse.Namespace, resolution: int, datasets: dict) -> list[dict]:
    """The plain loop and the project (`s3l.bench.training`'s jobs) on each data path at one resolution."""
    rows = []
    for data in PRETRAIN_PATHS:
        for runner in ("plain", "project"):
            row = {"stage": "pretrain", "resolution": resolution, "data": data, "runner": runner,
                   "batch": s.batch}
            run_dir = s.scratch / f"pretrain_{resolution}_{data}_{runner}"
            job = {"args": s, "method": "mocov2", "arch": s.arch, "resolution": resolution,
                   "runner": "plain" if runner == "plain" else "lightning", "data": data,
                   "datasets": datasets, "batches": window_marks(s)[-1], "run_dir": str(run_dir)}
            rows.append(attempt(row, partial(resident_first if data == "resident" else isolated, job), s))
            shutil.rmtree(run_dir, ignore_errors=True)  # a ResNet-50 MoCo checkpoint is about 0.5 GB
    datasets.pop(("resident", resolution), None)  # free the device for the next resolution
    return rows


def resident_first(job: dict) -> dict:
    """`isolated(job)` (in this process) after loading the resolution's cache onto the device, once: the
    images that `pipeline("resident", ...)` serves, so that a failed load fails this row only."""
    key = ("resident", job["resolution"])
    if key not in job["datasets"]:
        job["datasets"][key] = ResidentImages.load(job["datasets"][job["resolution"]], bench_device())
    return isolated(job)


def busy_row(s: argparse.Namespace, pretrain: list[dict], datasets: dict) -> dict:
    """The busy fraction at the recipe's resolution, on the resident path if it ran, else the device path."""
    resident = next(r for r in pretrain if r["data"] == "resident" and r["resolution"] == s.recipe_resolution)
    data = "resident" if resident["status"] == "ok" else "device"
    row = {"stage": "busy", "resolution": s.recipe_resolution, "data": data, "runner": "project",
           "batch": s.batch}
    run_dir = s.scratch / "busy"
    row = attempt(row, partial(stage_run, s, "pretrain", s.recipe_resolution, data, datasets, run_dir,
                               s.profile_steps), s)
    if row["status"] == "ok" and row["fraction"] is None:
        row["fraction_note"] = "not applicable: no CUDA device (a CPU runs no kernels)"
    return row


def finetune_rows(s: argparse.Namespace, datasets: dict) -> list[dict]:
    rows = []
    for data in FINETUNE_PATHS:
        row = {"stage": "finetune", "resolution": s.finetune_resolution, "data": data, "runner": "project",
               "batch": s.finetune_batch}
        run_dir = s.scratch / f"finetune_{data}"
        rows.append(attempt(row, partial(stage_run, s, "finetune", s.finetune_resolution, data, datasets,
                                         run_dir), s))
        shutil.rmtree(run_dir, ignore_errors=True)
    return rows


def forward_rows(s: argparse.Namespace, datasets: dict) -> list[dict]:
    """Evaluation rates: the test split at the fine-tuning resolution, the kNN monitor at the recipe's."""
    rows = []
    for purpose, resolution, batch in (("test evaluation", s.finetune_resolution, s.finetune_batch),
                                       ("kNN monitor", s.recipe_resolution, s.batch)):
        row = {"stage": "forward", "purpose": purpose, "resolution": resolution, "data": "on device",
               "batch": batch}
        rows.append(attempt(row, partial(forward_run, s, resolution, batch, datasets, s.scratch / "forward"), s))
    return rows


def measure(s: argparse.Namespace) -> dict:
    """Every run, those the projection and the targets need first (so a spent budget skips only extras)."""
    if s.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True  # upstream pretrains with it; Lightning keeps the process's value
    cfg, _ = pretrain_config(s.arch, s.recipe_resolution, s, s.scratch, None)
    caches = argparse.Namespace(root=s.root, resolutions=s.resolutions)
    datasets, builds = build_caches(caches, view_specs(cfg.augmentation), s.scratch)
    datasets["test"] = CUB200(s.root, "test")
    others = [r for r in s.resolutions if r != s.recipe_resolution]
    pretrain = pretrain_rows(s, s.recipe_resolution, datasets)
    busy = busy_row(s, pretrain, datasets)
    finetune = finetune_rows(s, datasets)
    forward = forward_rows(s, datasets)
    for resolution in others:
        pretrain += pretrain_rows(s, resolution, datasets)
    pretrain.sort(key=lambda row: row["resolution"])
    return {"cache": builds, "pretrain": pretrain, "busy": busy, "finetune": finetune, "forward": forward}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.from_json is not None:
        results = json.loads(args.from_json.read_text())
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        # Caches and run folders outside --out: a GPU machine sends back what is under --out, a few files only.
        scratch = Path(tempfile.mkdtemp(prefix="s3l-bench-gpu-"))
        s = bench_settings(args, scratch)
        started = time.perf_counter()
        results = {"machine": machine(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                   "command": shlex.join(["python", "-m", "s3l.bench.gpu", *(sys.argv[1:] if argv is None else argv)]),
                   "tiny": args.tiny, "settings": {k: v for k, v in vars(s).items()
                                                   if k not in ("deadline", "scratch", "cache_dir", "root")}}
        results.update(measure(s))
        results["total_s"] = time.perf_counter() - started
        results["projection"] = projection(results)
        results["targets"] = targets(results)
        shutil.rmtree(scratch, ignore_errors=True)
        (args.out / "bench.json").write_text(json.dumps(results, indent=2))
    report = markdown(results)
    if args.from_json is None:
        (args.out / "bench.md").write_text(report)
    rewrite_docs(args.docs, report)
    print(report)
    return results


if __name__ == "__main__":
    try:
        main()
    except S3LError as err:  # no dataset, an unreadable --docs: one line, no traceback, exit 2 as train.py
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
