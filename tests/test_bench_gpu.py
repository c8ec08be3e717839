"""`python -m s3l.bench.gpu --tiny`: the GPU benchmark's whole code path, on the CPU, on a 2-class CUB copy."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from s3l.bench.gpu_report import END, START
from s3l.bench.gpu_runs import union_seconds
from tests.test_bench import ROOT, two_class_cub


@pytest.mark.slow
def test_tiny_gpu_bench_measures_every_row_and_rewrites_only_the_docs_section(tmp_path):
    root = two_class_cub(tmp_path)
    docs = tmp_path / "benchmarks.md"
    shutil.copy(ROOT / "docs" / "benchmarks.md", docs)
    before = docs.read_text()
    cmd = [sys.executable, "-m", "s3l.bench.gpu", "--tiny", "--root", str(root), "--out", str(tmp_path / "out"),
           "--docs", str(docs)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "bench.json").read_text())

    assert [(r["data"], r["runner"]) for r in results["pretrain"]] == [
        (data, runner) for data in ("original", "cache", "device", "resident") for runner in ("plain", "project")]
    assert [r["data"] for r in results["finetune"]] == ["original", "resident"]
    assert [r["purpose"] for r in results["forward"]] == ["test evaluation", "kNN monitor"]
    for row in results["pretrain"] + results["finetune"] + results["forward"] + [results["busy"]]:
        assert row["status"] == "ok", row
        assert len(row["window_images_per_s"]) == 2 and row["images_per_s"] > 0 and row["peak_memory_mb"] > 100
    busy = results["busy"]
    assert busy["data"] == "resident" and busy["fraction"] is None and "not applicable" in busy["fraction_note"]
    assert busy["steps"] == 2 and busy["window_s"] > 0
    assert results["settings"]["precision"] == "32-true" and results["settings"]["channels_last"] is False
    plan = results["projection"]
    assert [t["term"] for t in plan["terms"]] == ["pretraining", "kNN monitor", "fine-tuning", "test evaluation"]
    assert plan["terms"][0]["images"] == 200 * 5994 and plan["terms"][3]["images"] == 120 * 5794
    assert plan["total_s"] == pytest.approx(sum(t["images"] / t["images_per_s"] for t in plan["terms"]))
    assert [t["status"] for t in results["targets"]][0] == "not measured"  # no kernels on a CPU

    after = docs.read_text()
    head, tail = before.split(START)[0], before.split(END)[1]
    assert after.startswith(head + START) and after.endswith(END + tail)
    section = after[len(head + START):-len(END + tail)]
    assert "## On a GPU: not run yet (tiny CPU check" in section and "| 32 | resident |" in section
    assert "make bench-gpu-data" in section and "### Projection of the whole CUB recipe" in section
    assert section.strip() == (tmp_path / "out" / "bench.md").read_text().strip()
    for line in ("pretrain   32 px resident project:", "finetune   32 px resident project:"):
        assert line in proc.stdout


def test_busy_time_is_the_union_of_overlapping_kernel_intervals():
    assert union_seconds([(5.0, 6.0), (0.0, 2.0), (1.0, 3.0), (1.5, 2.5)]) == pytest.approx(4.0)
    assert union_seconds([]) == 0.0


def test_gpu_bench_names_the_missing_dataset_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "s3l.bench.gpu", "--root", str(tmp_path / "nowhere")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (f"error: no CUB dataset at {tmp_path / 'nowhere'}: pass --root, or run "
                                   "`make bench-gpu-data` to copy the subset into the repo")


def test_gpu_bench_refuses_docs_it_cannot_rewrite_before_measuring(tmp_path):
    no_markers = tmp_path / "notes.md"
    no_markers.write_text("# notes\n")
    for docs, expected in ((tmp_path / "missing.md", "cannot read --docs"), (no_markers, "has no <!-- bench-gpu")):
        proc = subprocess.run([sys.executable, "-m", "s3l.bench.gpu", "--tiny", "--docs", str(docs),
                               "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 2 and expected in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "out").exists()  # refused before anything was measured
