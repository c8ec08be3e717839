"""`python -m s3l.bench` end to end with tiny settings, on a 2-class copy of the real CUB subset."""

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from s3l.data.datasets import CUB200
from s3l.data.views import view_specs
from tests.data.test_views import preset

ROOT = Path(__file__).resolve().parents[1]
CUB = ROOT.parent / "shared" / "datasets" / "cub_200_2011_10cls" / "CUB_200_2011"


def two_class_cub(folder: Path) -> Path:
    """The official CUB layout holding only classes 001 and 002 (the label and split files stay full)."""
    root = folder / "CUB_200_2011"
    lines = [line for line in (CUB / "images.txt").read_text().splitlines()
             if line.split()[1].startswith(("001.", "002."))]
    for line in lines:
        relative = line.split()[1]
        (root / "images" / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(CUB / "images" / relative, root / "images" / relative)
    (root / "images.txt").write_text("\n".join(lines) + "\n")
    for name in ("train_test_split.txt", "image_class_labels.txt", "classes.txt"):
        shutil.copy(CUB / name, root / name)
    return root


@pytest.mark.slow
def test_bench_measures_every_section_and_writes_json_and_markdown(tmp_path):
    root = two_class_cub(tmp_path)
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "s3l.bench", "--archs", "resnet10", "--resolutions", "32", "--steps", "2",
           "--warmup", "1", "--windows", "2", "--batch", "8", "--workers", "0", "--root", str(root),
           "--out", str(out), "--no-isolate", "--methods", "mocov2,byol"]
    # One intra-op thread: on a small, busy machine OpenMP threads waiting for each other slow tiny ops 10x.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    results = json.loads((out / "bench.json").read_text())

    assert results["machine"]["cores"] == os.cpu_count() and results["machine"]["device"] == "cpu"
    (cache,) = results["cache"]
    assert cache["short_side"] == 72 and cache["megabytes"] > 0  # 32 / sqrt(0.2) = 71.6, rounded up
    assert [r["pipeline"] for r in results["data"]] == ["original", "cache", "fast", "device"]
    assert [(r["method"], r["runner"], r["data"]) for r in results["train"]] == [
        ("mocov2", "plain", "original"), ("mocov2", "lightning", "original"), ("mocov2", "lightning", "fast"),
        ("mocov2", "lightning", "device"),  # the plain loop is upstream's MoCo step: the other methods have none
        ("byol", "lightning", "original"), ("byol", "lightning", "fast"), ("byol", "lightning", "device")]
    for row in results["data"] + results["train"]:
        assert len(row["window_images_per_s"]) == 2 and row["images_per_s"] > 0
    assert all(row["peak_memory_mb"] > 100 for row in results["train"])  # torch alone is a few hundred MB
    ids = {line.split()[0] for line in (root / "images.txt").read_text().splitlines()}
    flags = dict(line.split() for line in (root / "train_test_split.txt").read_text().splitlines())
    train_images = sum(flags[image_id] == "1" for image_id in ids)
    for row in results["epoch"]:
        assert row["images"] == train_images // 8 * 8  # one epoch, the last partial batch dropped
        assert 0 < row["epoch_s"] <= row["fit_s"] + 1e-6 and row["full_cub_epoch_s"] > row["epoch_s"]

    markdown = (out / "bench.md").read_text()
    profile = {r["pipeline"]: r for r in results["profile"]}
    assert list(profile) == ["original", "cache", "fast", "device"]
    assert "draw parameters" in profile["device"]["ms_per_image"] and "draw parameters" not in profile["fast"]["ms_per_image"]
    for row in profile.values():
        assert row["total_ms_per_image"] == pytest.approx(sum(row["ms_per_image"].values())) and row["total_ms_per_image"] > 0
    for heading in ("Data loading alone", "Where the time goes", "Pretraining throughput", "One epoch of the train split"):
        assert heading in markdown and heading in proc.stdout
    assert "| resnet10 | 32 |" in markdown and "| project + device | / plain |" in markdown
    assert "Pretraining throughput per method" in markdown and "| byol | resnet10 | 32 |" in markdown
    stream = results["stream"]  # LitData is a dev dependency
    assert [(r["resolution"], r["storage"]) for r in stream] == [(32, "jpeg"), (32, "raw")]
    for row in stream:
        assert row["build_images_per_s"] > 0 and row["images_per_s"] > 0 and row["epoch_start_s"] > 0
    raw_size = next(r["megabytes"] for r in stream if r["storage"] == "raw")
    assert raw_size == pytest.approx(cache["megabytes"], rel=0.1)  # the same pixels, in chunks
    assert next(r["megabytes"] for r in stream if r["storage"] == "jpeg") < raw_size
    assert "Streaming shards (LitData)" in markdown and "| 32 | jpeg |" in markdown


@pytest.mark.parametrize(("flags", "message"), [
    (["--pipelines", "fast,gpu"], "unknown pipeline(s) gpu: choose from original, cache, fast, device"),
    (["--augmentation", "cutout"], "unknown augmentation option 'cutout': choose one of byol, mocov2"),
])
def test_bench_rejects_an_unknown_option_in_one_line(flags, message):
    proc = subprocess.run([sys.executable, "-m", "s3l.bench", *flags], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bench_composes_the_views_of_its_augmentation_option(tmp_path):
    from s3l.bench.training import pretrain_config

    args = argparse.Namespace(root=str(CUB), batch=8, workers=0, precision="32-true", augmentation="byol")
    cfg, _ = pretrain_config("resnet10", 32, args, tmp_path, None)
    assert view_specs(cfg.augmentation) == preset("byol")


def test_profile_times_each_view_of_asymmetric_views_with_its_own_spec():
    from s3l.bench.data import pipeline
    from s3l.bench.profile import LAST_OPS, ORDER, one_pass

    dataset = CUB200(str(CUB), "train")
    datasets = {"original": dataset, 32: dataset}
    for name in ("original", "fast", "device"):
        _, transform, collate = pipeline(name, datasets, 32, preset("byol"))
        spent = one_pass(name, dataset, transform, collate, images=4, batch=2)
        assert set(spent) <= set(ORDER) and spent[LAST_OPS] > 0 and spent["crop + resize"] > 0, name


def test_repeated_training_runs_alternate_their_order_and_pool_their_windows(monkeypatch, tmp_path):
    from s3l.bench import training

    order = []

    def fake_run(job):
        order.append((job["runner"], job["data"]))
        rate = 10.0 if job["runner"] == "plain" else 20.0
        return {"times": [0.0, 8 / rate, 16 / rate], "peak_memory_mb": float(len(order))}

    monkeypatch.setattr(training, "isolated", fake_run)
    args = argparse.Namespace(methods=["mocov2"], archs=["resnet10"], resolutions=[32],
                              pipelines=["original", "cache", "fast"],
                              repeats=3, steps=2, batch=4, warmup=1, windows=2)
    rows = training.bench_train(args, {}, tmp_path)
    abc = [("plain", "original"), ("lightning", "original"), ("lightning", "fast")]
    assert order == abc + abc[::-1] + abc
    plain = rows[0]
    assert plain["repeats"] == 3 and plain["window_images_per_s"] == [10.0] * 6 and plain["images_per_s"] == 10.0
    assert plain["peak_memory_mb"] == 7.0  # the largest of its three runs (calls 1, 6 and 7)


@pytest.mark.slow
def test_end_to_end_section_times_whole_runs_of_the_project_and_the_plain_script(tmp_path):
    root = two_class_cub(tmp_path)
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "s3l.bench", "--sections", "e2e", "--archs", "resnet10", "--resolutions", "32",
           "--batch", "8", "--workers", "1", "--e2e-epochs", "2", "--e2e-knn-every", "1", "--root", str(root),
           "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    row = json.loads((out / "bench.json").read_text())["e2e"]
    ids = {line.split()[0] for line in (root / "images.txt").read_text().splitlines()}
    flags = dict(line.split() for line in (root / "train_test_split.txt").read_text().splitlines())
    train_images = sum(flags[image_id] == "1" for image_id in ids)
    assert row["images_per_epoch"] == train_images // 8 * 8 and row["K"] % 8 == 0 and row["K"] < train_images - 8
    assert row["plain_s"] > row["plain_in_process_s"] > 0 and row["project_s"] > row["project_stage_wall_s"] > 0
    assert row["speed_ratio"] == pytest.approx(row["plain_s"] / row["project_s"])
    assert all(0 <= top1[0] <= 1 for top1 in row["knn_top1"].values())  # both measured the kNN at the end
    assert row["commands"]["project"].startswith("python train.py stage=pretrain")
    assert "Whole short runs, end to end" in (out / "bench.md").read_text()
