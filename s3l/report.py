"""What the user sees in the terminal: the config tree at start, the results table at the end."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table
from rich.tree import Tree

console = Console(width=None if Console().is_terminal else 140)

CONFIG_ORDER = ("method", "architecture", "resolution", "dataset", "chain", "stage", "stages", "trainer",
                "logger", "callbacks", "paths")


@rank_zero_only
def print_config_tree(cfg: DictConfig) -> None:
    """The composed config as a tree of groups (resolved), the way lightning-hydra-template shows it."""
    tree = Tree("config", guide_style="dim")
    for key in [k for k in CONFIG_ORDER if k in cfg] + [k for k in cfg if k not in CONFIG_ORDER]:
        value = cfg[key]
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        tree.add(key).add(Syntax(text.rstrip(), "yaml", theme="ansi_dark", background_color="default"))
    console.print(tree)


METRIC_NAMES = {"top1": "top-1", "mean_per_class": "mean per-class accuracy", "map": "mAP"}


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def stage_score(stage: dict) -> float | None:
    """A stage's headline on the test split in the dataset's metric (fraction): the last epoch of a trained
    classifier, the score of an evaluation stage (probe: deepest stage; k-shot: most shots), None for pretraining."""
    m = stage["metrics"]
    return m.get("score_last", m.get("top1_last", m.get("score")))


def knn_score(stage: dict) -> float | None:
    """The weighted kNN top-1 of a stage: the pretraining monitor's last value, or a kNN stage's result."""
    m = stage["metrics"]
    return m.get("knn_top1", m.get("top1") if stage["kind"] == "knn" else None)


@rank_zero_only
def print_results_table(summary: dict, out_dir: Path) -> None:
    """One row per stage: its score (last and best epoch, labelled) next to what it cost."""
    table = Table(title=f"{summary['name']}: {summary['method']} / {summary['architecture']} / {summary['dataset']}")
    for column in ("stage", "kind", "init", "arch", "px", "epochs", "kNN top-1", "score last", "score best (epoch)",
                   "wall s", "img/s", "PFLOPs"):
        table.add_column(column, justify="left" if column in ("stage", "kind", "init", "arch") else "right")
    metric = "top-1"
    for s in summary["stages"]:
        m, c = s["metrics"], s["cost"]
        best = m.get("score_best", m.get("top1_best"))
        best = "-" if best is None else f"{_pct(best)} ({m['best_epoch']})"
        init = "random" if s["init_from"] is None else Path(s["init_from"]).name
        metric = METRIC_NAMES.get(s.get("dataset", {}).get("metric", "top1"), metric)
        table.add_row(
            s["stage"], s["kind"], init, s["architecture"], str(s["resolution"]), str(s["epochs"]),
            _pct(knn_score(s)), _pct(stage_score(s)), best, f"{c['wall_clock_s']:.0f}", f"{c['images_per_s']:.0f}",
            f"{c['train_pflops']:.4f}",
        )
    console.print(table)
    console.print(f"score: {metric} on the test split in %; 'last' = final epoch, 'best' = max over epochs (upstream's "
                  "number); probe: deepest stage; k-shot: most shots; kNN = weighted kNN of the features.")
    console.print(f"outputs: {out_dir}  (results.json, config_resolved.yaml, <stage>/metrics.csv, checkpoints)")
