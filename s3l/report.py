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


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


@rank_zero_only
def print_results_table(summary: dict, out_dir: Path) -> None:
    """One row per stage: accuracy (last and best epoch, labelled) next to what it cost."""
    table = Table(title=f"{summary['name']}: {summary['method']} / {summary['architecture']} / {summary['dataset']}")
    for column in ("stage", "kind", "init", "arch", "px", "epochs", "kNN top-1", "top-1 last", "top-1 best (epoch)",
                   "wall s", "img/s", "PFLOPs"):
        table.add_column(column, justify="left" if column in ("stage", "kind", "init", "arch") else "right")
    for s in summary["stages"]:
        m, c = s["metrics"], s["cost"]
        best = "-" if m.get("top1_best") is None else f"{_pct(m['top1_best'])} ({m['best_epoch']})"
        init = "random" if s["init_from"] is None else Path(s["init_from"]).name
        table.add_row(
            s["stage"], s["kind"], init, s["architecture"], str(s["resolution"]), str(s["epochs"]),
            _pct(m.get("knn_top1")), _pct(m.get("top1_last")), best, f"{c['wall_clock_s']:.0f}", f"{c['images_per_s']:.0f}",
            f"{c['train_pflops']:.4f}",
        )
    console.print(table)
    console.print("top-1 on the test split in %; 'last' = final epoch, 'best' = max over epochs (upstream's number); kNN = weighted kNN of the pretrained features.")
    console.print(f"outputs: {out_dir}  (results.json, config_resolved.yaml, <stage>/metrics.csv, checkpoints)")
