"""One table for a sweep: every chain's fine-tuned accuracy next to what its pretraining cost.

    python -m s3l.summarize outputs/cub_112_mocov2/multirun_2024-05-01_12-00-00 [--out DIR]

finds every chain results.json under the directory (one per run; the stages' own results.json are
skipped) and writes summary.csv, summary.md and accuracy_vs_cost.png; when the runs cover more than one dataset
(a transfer sweep, e.g. `experiment=transfer dataset=cars,pets,...`), also transfer.csv, transfer.md and
transfer.png: one row per dataset, one column per stage, each score in that dataset's metric.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from s3l.errors import S3LError
from s3l.report import METRIC_NAMES, knn_score, stage_score

COLUMNS = (
    "name", "method", "architecture", "pretrain_resolution", "dataset", "pretrain_knn_top1", "top1_last", "top1_best",
    "pretrain_device_hours", "pretrain_pflops", "pretrain_images_per_s", "pretrain_wall_clock_s",
    "total_wall_clock_s", "run_dir",
)


def find_chain_results(root: Path) -> list[tuple[Path, dict]]:
    """(path, contents) of every chain results.json under root (those with "chain" and "stages")."""
    found = []
    for path in sorted(root.rglob("results.json")):
        try:
            results = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise S3LError(f"{path} is not valid JSON ({err}); delete it or rerun that run") from err
        if "chain" in results and "stages" in results:
            found.append((path, results))
    return found


def summary_row(results: dict, run_dir: Path) -> dict:
    """One run: its outcome (the chain's final stage) and its pretraining cost summed over pretrain stages."""
    final = results["final"]["metrics"]
    pretrain = [s["cost"] for s in results["stages"] if s["kind"] == "pretrain"]
    return {
        "name": results["name"],
        "method": results["method"],
        "architecture": results["architecture"],
        "pretrain_resolution": results["pretrain_resolution"],
        "dataset": results["dataset"],
        "pretrain_knn_top1": next((s["metrics"].get("knn_top1") for s in reversed(results["stages"])
                                   if s["kind"] == "pretrain"), None),
        "top1_last": final.get("top1_last"),
        "top1_best": final.get("top1_best"),
        "pretrain_device_hours": sum(c["device_hours"] for c in pretrain),
        "pretrain_pflops": sum(c["train_pflops"] for c in pretrain),
        "pretrain_images_per_s": pretrain[0]["images_per_s"] if pretrain else None,
        "pretrain_wall_clock_s": sum(c["wall_clock_s"] for c in pretrain),
        "total_wall_clock_s": results["total_wall_clock_s"],
        "run_dir": str(run_dir),
    }


def summarize(root: Path, out: Path) -> list[dict]:
    """Rows of every chain under root (sorted by name, architecture, resolution); writes the csv, md, png."""
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise S3LError(f"{root} is not a directory; pass a run or sweep directory (e.g. outputs/<name>)")
    found = find_chain_results(root)
    if not found:
        raise S3LError(f"no chain results.json under {root}; pass a directory holding finished runs")
    rows = [summary_row(results, path.parent) for path, results in found]
    rows.sort(key=lambda r: (r["name"], r["method"], r["architecture"], r["pretrain_resolution"], r["run_dir"]))
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "summary.csv")
    (out / "summary.md").write_text(markdown_table(rows, root))
    plot_accuracy_vs_cost(rows, out / "accuracy_vs_cost.png")
    if is_transfer_sweep(rows):
        write_transfer(transfer_rows(found), out)
    return rows


def is_transfer_sweep(rows: list[dict]) -> bool:
    """Runs over more than one dataset: what the transfer table is for."""
    return len({r["dataset"] for r in rows}) > 1


def print_summary(rows: list[dict], out: Path) -> None:
    """The Markdown tables that `summarize` wrote to `out`, then the path of every file it wrote."""
    names = ["summary.csv", "summary.md", "accuracy_vs_cost.png"]
    if is_transfer_sweep(rows):
        names += ["transfer.csv", "transfer.md", "transfer.png"]
    for name in names:
        if name.endswith(".md"):
            print((out / name).read_text())
    for name in names:
        print(out / name)
    print(f"{len(rows)} run(s)")


def transfer_rows(found: list[tuple[Path, dict]]) -> list[dict]:
    """One row per run: its dataset, the dataset's metric and each stage's score (kNN stages: top-1)."""
    rows = []
    for path, results in found:
        stages = results["stages"]
        metric = next((s["dataset"].get("metric", "top1") for s in stages if "dataset" in s), "top1")
        scores = {s["stage"]: knn_score(s) if s["kind"] == "knn" else stage_score(s) for s in stages
                  if s["kind"] != "pretrain"}
        rows.append({"dataset": results["dataset"], "metric": metric, "scores": scores, "run_dir": str(path.parent)})
    rows.sort(key=lambda r: (r["dataset"], r["run_dir"]))
    return rows


def write_transfer(rows: list[dict], out: Path) -> None:
    """transfer.csv (fractions), transfer.md (percent, with each dataset's metric) and transfer.png."""
    stages = list(dict.fromkeys(name for r in rows for name in r["scores"]))
    with (out / "transfer.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["dataset", "metric", *stages, "run_dir"])
        writer.writerows([r["dataset"], r["metric"], *(r["scores"].get(n) for n in stages), r["run_dir"]] for r in rows)
    lines = ["| dataset | metric | " + " | ".join(f"{n} (%)" for n in stages) + " |", "|" + "---|" * (len(stages) + 2)]
    lines += [f"| {r['dataset']} | {METRIC_NAMES.get(r['metric'], r['metric'])} | "
              + " | ".join(_pct(r["scores"].get(n)) for n in stages) + " |" for r in rows]
    legend = ("\nEach score on the dataset's test split in its own metric: probe = linear probe of the deepest "
              "stage, knn = weighted kNN top-1, kshot = the most shots (mean over seeds), finetune/linear = last "
              "epoch.\n")
    (out / "transfer.md").write_text("\n".join(lines) + "\n" + legend)
    plot_transfer(rows, stages, out / "transfer.png")


def plot_transfer(rows: list[dict], stages: list[str], path: Path) -> None:
    """Grouped bars: one group per dataset, one bar per stage."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6, 1.2 * len(rows) * max(1, len(stages)) / 2), 4))
    ax = fig.subplots()
    width = 0.8 / max(1, len(stages))
    for i, name in enumerate(stages):
        xs = [j + i * width for j in range(len(rows))]
        ys = [100 * (r["scores"].get(name) or 0) for r in rows]
        ax.bar(xs, ys, width=width, label=name)
    ax.set_xticks([j + width * (len(stages) - 1) / 2 for j in range(len(rows))],
                  [f"{r['dataset']}\n({METRIC_NAMES.get(r['metric'], r['metric'])})" for r in rows], fontsize=8)
    ax.set_ylabel("score on the test split (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.suptitle("transfer: one pretrained backbone, each dataset in its own metric")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_csv(rows: list[dict], path: Path) -> None:
    """All columns with full precision; top-1 as a fraction, as in results.json."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown_table(rows: list[dict], root: Path) -> str:
    """The summary as a Markdown table with a one-line legend."""
    header = ("run", "method", "arch", "pretrain px", "dataset", "kNN after pretraining (%)", "top-1 last (%)",
              "top-1 best (%)",
              "pretrain device-h", "pretrain PFLOPs", "pretrain img/s", "pretrain wall s", "total wall s", "run dir")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = (
            r["name"], r["method"], r["architecture"], str(r["pretrain_resolution"]), r["dataset"],
            _pct(r["pretrain_knn_top1"]), _pct(r["top1_last"]), _pct(r["top1_best"]), _num(r["pretrain_device_hours"], ".3g"),
            _num(r["pretrain_pflops"], ".3g"), _num(r["pretrain_images_per_s"], ".0f"),
            _num(r["pretrain_wall_clock_s"], ".0f"), _num(r["total_wall_clock_s"], ".0f"),
            _relative(r["run_dir"], root),
        )
        lines.append("| " + " | ".join(cells) + " |")
    legend = ("\nTop-1 of the chain's final stage on the test split: 'last' = final epoch, 'best' = max over "
              "epochs. Pretraining cost is summed over the pretrain stages (img/s: the first one).\n")
    return "\n".join(lines) + "\n" + legend


def _relative(run_dir: str, root: Path) -> str:
    path = Path(run_dir)
    return str(path.relative_to(root)) if path.is_relative_to(root) and path != root else str(path)


def plot_accuracy_vs_cost(rows: list[dict], path: Path) -> None:
    """Fine-tuned top-1 (last epoch) against pretraining cost, measured (device-hours) and counted (PFLOPs)."""
    # A bare Figure renders with Agg and leaves pyplot's global backend alone (notebooks keep theirs).
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, key, label in zip(axes, ("pretrain_device_hours", "pretrain_pflops"),
                              ("pretraining device-hours (measured)", "pretraining PFLOPs (estimated)")):
        for r in rows:
            if r["top1_last"] is None:
                continue
            x, y = r[key], 100 * r["top1_last"]
            ax.scatter(x, y, color="tab:blue")
            ax.annotate(f"{r['method']} {r['architecture']} @ {r['pretrain_resolution']} px", (x, y),
                        textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.margins(x=0.3, y=0.15)  # room for the labels right of the points
        ax.set_xlim(left=0)  # cost from zero, so the ratio between runs reads off the axis
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("fine-tuned top-1, last epoch (%)")
    fig.suptitle("accuracy vs pretraining cost")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def log_to_wandb(rows: list[dict]) -> None:
    """Log the rows as a wandb.Table under "summary" when a W&B run is active; otherwise do nothing."""
    import wandb  # imported here: summarizing must not pay for (or need) wandb

    if wandb.run is None or not rows:
        return
    table = wandb.Table(columns=list(COLUMNS), data=[[r[c] for c in COLUMNS] for r in rows])
    wandb.run.log({"summary": table})


def publish_to_wandb(rows: list[dict], project: str, out: Path) -> None:
    """One W&B run of job type "summary" holding the table (and the plot), files kept under `out`."""
    import wandb

    from s3l.loggers import wandb_mode

    wandb.init(project=project, job_type="summary", name=f"summary/{out.name}", dir=str(out),
               mode=wandb_mode(None))
    try:
        log_to_wandb(rows)
        wandb.run.log({"accuracy_vs_cost": wandb.Image(str(out / "accuracy_vs_cost.png"))})
    finally:
        wandb.finish()


class SummarizeSweep(Callback):
    """A Hydra callback: at the end of a multirun, summarise its directory (what `python -m s3l.summarize` does)
    and print the tables, so a transfer sweep ends with its transfer table."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            rows = summarize(sweep_dir, sweep_dir)
        except S3LError as err:  # e.g. every run failed: nothing to summarise, the runs said why
            print(f"summary: {err}", file=sys.stderr)
            return
        print_summary(rows, sweep_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m s3l.summarize", description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="a run or sweep directory (searched recursively)")
    parser.add_argument("--out", type=Path, default=None, help="where the summary files go (default: DIR)")
    parser.add_argument("--wandb-project", default=None,
                        help="also log the table to this W&B project (offline unless an API key is configured)")
    args = parser.parse_args(argv)
    out = args.out or args.dir
    try:
        rows = summarize(args.dir, out)
    except S3LError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.wandb_project:
        publish_to_wandb(rows, args.wandb_project, out)
    print_summary(rows, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
