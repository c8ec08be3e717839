import csv
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from s3l.summarize import main, summarize

ROOT = Path(__file__).resolve().parents[1]

PRETRAIN_METRICS = "epoch,step,train/instance_acc1,train/loss\n0,0,0.10,7.20\n0,1,0.15,7.00\n1,2,0.30,6.40\n1,3,0.35,6.20\n"
FINETUNE_METRICS = (
    "epoch,step,train/loss,val/acc1,val/acc5\n"
    "0,0,2.30,,\n0,1,2.10,,\n0,1,,0.40,0.80\n1,2,1.90,,\n1,3,1.70,,\n1,3,,0.55,0.90\n"
)


def stage(name: str, kind: str, resolution: int, run_dir: Path, metrics: dict, cost: dict, init_from) -> dict:
    """A stage entry as s3l.run.stage_result writes it."""
    stage_dir = run_dir / name
    return {
        "stage": name.split("_", 1)[1], "kind": kind, "architecture": "custom_resnet50", "resolution": resolution,
        "epochs": 2, "planned_epochs": 2, "metrics": metrics,
        "cost": {"wall_clock_s": cost["wall"], "train_images": 600, "images_per_s": cost["ips"],
                 "peak_memory_mb": 1500.0, "forward_gflops_per_image": 1.0, "train_pflops": cost["pflops"],
                 "device_hours": cost["hours"]},
        "skipped_images": {"train": 0, "test": 0},
        "paths": {"stage_dir": str(stage_dir), "checkpoint": str(stage_dir / "checkpoints" / "last.ckpt"),
                  "backbone": str(stage_dir / "backbone.pt"), "metrics_csv": str(stage_dir / "metrics.csv")},
        "s3l_version": "0.1.0", "init": "random" if init_from is None else f"backbone from {init_from}",
        "init_from": init_from,
    }


def write_run(run_dir: Path, resolution: int, pretrain_costs: list[dict], top1_last: float, top1_best: float,
              total_wall: float) -> None:
    """A finished chain: pretrain stage(s) then finetune@224, each with its results.json and metrics.csv."""
    stages, previous = [], None
    for i, cost in enumerate(pretrain_costs):
        s = stage(f"{i}_pretrain", "pretrain", resolution, run_dir, {"train/loss": 6.2, "knn_top1": 0.25 + i / 10},
                  cost, previous)
        stages.append(s)
        previous = s["paths"]["stage_dir"]
    finetune_cost = {"wall": 50.0, "ips": 900.0, "pflops": 0.5, "hours": 0.25}
    finetune_metrics = {"val/acc1": top1_last, "top1_last": top1_last, "top1_best": top1_best, "best_epoch": 1,
                        "top5_last": 0.9}
    stages.append(stage(f"{len(stages)}_finetune", "finetune", 224, run_dir, finetune_metrics, finetune_cost,
                        previous))
    for s in stages:
        stage_dir = Path(s["paths"]["stage_dir"])
        stage_dir.mkdir(parents=True)
        (stage_dir / "results.json").write_text(json.dumps(s))
        (stage_dir / "metrics.csv").write_text(PRETRAIN_METRICS if s["kind"] == "pretrain" else FINETUNE_METRICS)
    chain = {
        "name": "cub_mocov2", "method": "mocov2", "architecture": "custom_resnet50",
        "pretrain_resolution": resolution, "dataset": "cub200", "chain": [s["stage"] for s in stages],
        "stages": stages, "final": stages[-1], "total_wall_clock_s": total_wall, "config_hash": "abc123",
        "s3l_version": "0.1.0",
    }
    (run_dir / "results.json").write_text(json.dumps(chain))


def make_sweep(root: Path) -> Path:
    """A Hydra multirun directory with two chains: 224 px (one pretrain stage) and 112 px (two)."""
    sweep = root / "cub_mocov2" / "multirun_2024-05-01_12-00-00"
    write_run(sweep / "0", 224, [{"wall": 400.0, "ips": 150.0, "pflops": 2.0, "hours": 0.5}],
              top1_last=0.5, top1_best=0.55, total_wall=460.0)
    write_run(sweep / "1", 112, [{"wall": 100.0, "ips": 600.0, "pflops": 0.5, "hours": 0.125},
                                 {"wall": 20.0, "ips": 500.0, "pflops": 0.1, "hours": 0.025}],
              top1_last=0.4375, top1_best=0.45, total_wall=180.0)
    return sweep


def read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_one_row_per_chain_with_final_accuracy_and_pretraining_cost(tmp_path):
    sweep = make_sweep(tmp_path)
    summarize(tmp_path, tmp_path)
    rows = read_csv(tmp_path / "summary.csv")  # 5 stage results.json are in the tree too
    assert [(r["pretrain_resolution"], r["run_dir"]) for r in rows] == [("112", str(sweep / "1")),
                                                                        ("224", str(sweep / "0"))]
    low, high = rows
    assert float(low["top1_last"]) == 0.4375 and float(low["top1_best"]) == 0.45
    assert float(low["pretrain_device_hours"]) == pytest.approx(0.125 + 0.025)
    assert float(low["pretrain_pflops"]) == pytest.approx(0.5 + 0.1)
    assert float(low["pretrain_wall_clock_s"]) == pytest.approx(100.0 + 20.0)
    assert float(low["pretrain_images_per_s"]) == 600.0  # the first pretrain stage's throughput
    assert float(low["total_wall_clock_s"]) == 180.0
    assert (high["name"], high["method"], high["architecture"], high["dataset"]) == (
        "cub_mocov2", "mocov2", "custom_resnet50", "cub200")
    assert float(high["pretrain_device_hours"]) == 0.5 and float(high["pretrain_pflops"]) == 2.0


def test_markdown_table_has_both_resolutions_and_percentages(tmp_path):
    make_sweep(tmp_path)
    summarize(tmp_path, tmp_path / "report")
    lines = (tmp_path / "report" / "summary.md").read_text().splitlines()
    row_112 = next(line for line in lines if "| 112 |" in line)
    row_224 = next(line for line in lines if "| 224 |" in line)
    assert "| 35.0 | 43.8 | 45.0 |" in row_112  # the last pretraining stage's kNN; 0.4375 -> 43.8 %
    assert "| 50.0 | 55.0 |" in row_224
    assert "'last' = final epoch" in lines[-1] and "'best' = max over epochs" in lines[-1]


def test_accuracy_vs_cost_plot_is_a_png(tmp_path):
    make_sweep(tmp_path)
    summarize(tmp_path, tmp_path)
    png = (tmp_path / "accuracy_vs_cost.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(png) > 1024


def test_cli_prints_the_table_and_paths(tmp_path, capsys):
    make_sweep(tmp_path)
    assert main([str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "| 43.8 |" in printed and str(tmp_path / "out" / "summary.csv") in printed


def test_empty_directory_exits_with_status_2_and_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "s3l.summarize", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: no chain results.json under") and proc.stderr.count("\n") == 1


def test_log_to_wandb_logs_a_table_only_when_a_run_is_active(tmp_path, monkeypatch):
    from s3l.summarize import log_to_wandb

    logged = []
    fake = types.SimpleNamespace(run=None, Table=lambda columns, data: {"columns": columns, "data": data})
    monkeypatch.setitem(sys.modules, "wandb", fake)
    rows = summarize(make_sweep(tmp_path), tmp_path)
    log_to_wandb(rows)  # no active run: nothing happens
    fake.run = types.SimpleNamespace(log=logged.append)
    log_to_wandb(rows)
    (entry,) = logged
    table = entry["summary"]
    assert table["columns"][:4] == ["name", "method", "architecture", "pretrain_resolution"]
    assert [row[3] for row in table["data"]] == [112, 224]
