"""metrics.csv across resumes, and W&B settings that follow W&B's own environment."""

import csv
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from s3l.config import StageSpec
from s3l.loggers import csv_logger, wandb_mode, wandb_settings
from s3l.resume import ResumePoint

ROWS = [{"epoch": "0", "step": "3", "train/loss": "2.0", "knn/acc1": ""},
        {"epoch": "0", "step": "3", "train/loss": "", "knn/acc1": "0.5"},
        {"epoch": "1", "step": "4", "train/loss": "1.9", "knn/acc1": ""},
        {"epoch": "1", "step": "7", "train/loss": "1.8", "knn/acc1": ""}]


def write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_resume_keeps_the_rows_before_the_checkpoint_step_and_drops_the_rest(tmp_path):
    write_csv(tmp_path / "metrics.csv", ROWS)
    csv_logger(tmp_path, ResumePoint(tmp_path / "last.ckpt", epoch=0, step=4, pending_row=None))
    assert [(r["step"], r["train/loss"], r["knn/acc1"]) for r in read_csv(tmp_path / "metrics.csv")] == [
        ("3", "2.0", ""), ("3", "", "0.5")]


def test_the_epoch_row_logged_after_the_checkpoint_is_restored_once(tmp_path):
    write_csv(tmp_path / "metrics.csv", ROWS[:1])  # killed before Lightning logged the epoch's kNN row
    pending = {"epoch": 0, "step": 3, "knn/acc1": 0.5}
    csv_logger(tmp_path, ResumePoint(tmp_path / "last.ckpt", epoch=0, step=4, pending_row=pending))
    rows = read_csv(tmp_path / "metrics.csv")
    assert [(r["step"], r["train/loss"], r["knn/acc1"]) for r in rows] == [("3", "2.0", ""), ("3", "", "0.5")]
    write_csv(tmp_path / "metrics.csv", ROWS[:2])  # the row made it to disk: not added twice
    csv_logger(tmp_path, ResumePoint(tmp_path / "last.ckpt", epoch=0, step=4, pending_row=pending))
    assert len(read_csv(tmp_path / "metrics.csv")) == 2


def test_a_fresh_stage_starts_an_empty_csv(tmp_path):
    write_csv(tmp_path / "metrics.csv", ROWS)
    csv_logger(tmp_path, None).experiment  # noqa: B018  (creating the writer is what empties the file)
    assert not (tmp_path / "metrics.csv").exists() or read_csv(tmp_path / "metrics.csv") == []


@pytest.mark.parametrize(("env", "config", "expected"), [
    ({"WANDB_MODE": "offline", "WANDB_API_KEY": "k"}, None, "offline"),
    ({"WANDB_MODE": "offline"}, "online", "offline"),
    ({"WANDB_DISABLED": "true", "WANDB_API_KEY": "k"}, None, "disabled"),
    ({}, "disabled", "disabled"),
    ({"WANDB_API_KEY": "k"}, None, "online"),
    ({}, None, "offline"),
])
def test_wandb_mode_lets_the_users_environment_win(monkeypatch, tmp_path, env, config, expected):
    for name in ("WANDB_MODE", "WANDB_DISABLED", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc with a key
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert wandb_mode(config) == expected


def test_wandb_project_entity_group_and_tags_follow_the_environment(monkeypatch, tmp_path):
    cfg = OmegaConf.create({
        "name": "demo", "paths": {"output_dir": "/runs/run-1"}, "method": {"name": "mocov2"},
        "dataset": {"name": "digits"},
        "logger": {"wandb": {"project": "s3l", "entity": None, "mode": "offline", "tags": ["mine"]}}})
    spec = StageSpec("pretrain", "stages.pretrain",
                     OmegaConf.create({"kind": "pretrain", "architecture": "resnet10", "resolution": 16}))
    for name in ("WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_GROUP", "WANDB_TAGS", "WANDB_DIR", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    plain = wandb_settings(cfg, spec, tmp_path)
    assert (plain["project"], plain["entity"], plain["group"], plain["save_dir"]) == (
        "s3l", None, "demo/run-1", str(tmp_path))
    monkeypatch.setenv("WANDB_PROJECT", "theirs")
    monkeypatch.setenv("WANDB_ENTITY", "lab")
    monkeypatch.setenv("WANDB_RUN_GROUP", "sweep-7")
    monkeypatch.setenv("WANDB_TAGS", "a,b")
    env = wandb_settings(cfg, spec, tmp_path)
    assert (env["project"], env["entity"], env["group"]) == ("theirs", "lab", "sweep-7")
    assert env["tags"] == ["mocov2", "resnet10", "16px", "digits", "pretrain", "mine", "a", "b"]
    assert env["name"] == "demo/pretrain"
