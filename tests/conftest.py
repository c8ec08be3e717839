"""Shared test fixtures: composing configs the way train.py does, and running train.py as a user would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from s3l.config import quote_numeric_group_overrides, register_resolvers

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
CUB_SUBSET = ROOT.parent / "shared" / "datasets" / "cub_200_2011_10cls" / "CUB_200_2011"
HYMENOPTERA = ROOT.parent / "shared" / "datasets" / "hymenoptera_data"

register_resolvers()


def compose_config(overrides: list[str], output_dir: Path) -> DictConfig:
    """The config train.py would see for these overrides, with outputs under output_dir."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=quote_numeric_group_overrides(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


def is_whole_zombie(pid: int) -> bool:
    """A killed, unreaped process has fully exited: its main thread is a zombie and no other thread of it is
    still exiting. The imports start native threads, and the files (so the run's lock) go only when the last
    thread has exited, which under load can come after the main thread already shows "Z"."""
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state == "Z" and os.listdir(f"/proc/{pid}/task") == [str(pid)]


@pytest.fixture(scope="module")
def module_tmp(request, tmp_path_factory):
    """A folder that one module's tests share, removed once they have run. Like each test's own tmp_path
    (`tmp_path_retention_policy = "failed"` in pyproject.toml), it does not outlive its tests: the suite's
    runs write checkpoints, and kept to the end they add up to about 13 GB."""
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def compose_cfg(tmp_path):
    return lambda *overrides: compose_config(list(overrides), tmp_path)


class TrainRun:
    """One `python train.py ...` process: its exit status, output and run directory."""

    def __init__(self, proc: subprocess.CompletedProcess, log_dir: Path) -> None:
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.log_dir = log_dir

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def run_dir(self) -> Path:
        """The single run directory this process created (outputs/<name>/<run id>)."""
        (results,) = [p.parent for p in self.log_dir.glob("*/*/results.json")] or [None]
        assert results is not None, f"no results.json under {self.log_dir}:\n{self.output[-3000:]}"
        return results

    def results(self) -> dict:
        return json.loads((self.run_dir() / "results.json").read_text())


def run_train(args: list[str], log_dir: Path, timeout: int = 600, env: dict | None = None) -> TrainRun:
    """Run train.py in a subprocess with outputs under log_dir, no progress bar, no printed config."""
    flags = [a for a in args if a.startswith("-")]  # e.g. -m must precede the overrides (argparse)
    overrides = [a for a in args if not a.startswith("-")]
    cmd = [sys.executable, str(ROOT / "train.py"), *flags, f"paths.log_dir={log_dir}",
           "callbacks.progress_bar=none", "print_config=false", *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})
    return TrainRun(proc, log_dir)


@pytest.fixture
def train(tmp_path):
    """`train([...overrides])` runs train.py with outputs in this test's tmp_path/outputs."""
    return lambda args, **kw: run_train(args, tmp_path / "outputs", **kw)
