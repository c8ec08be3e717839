"""bench.md: the machine, then one table per section that ran."""

from __future__ import annotations

from s3l.bench.profile import ORDER
from s3l.bench.training import train_runs


def markdown(results: dict) -> str:
    m, s = results["machine"], results["settings"]
    lines = [
        "# S3L pretraining benchmark", "",
        f"- machine: {m['cpu']}, {m['cores']} cores, device {m['device']}; torch {m['torch']}, "
        f"torchvision {m['torchvision']}, lightning {m['lightning']}, Python {m['python']}; "
        f"{m['intra_op_threads']} intra-op threads per training process",
        f"- load average (1, 5, 15 min) at start {fmt_load(m['load_average'])}, "
        f"at end {fmt_load(m['load_average_end'])}",
        f"- views {s['augmentation']}, batch {s['batch']}, {s['workers']} workers, precision {s['precision']}, "
        f"channels_last {s['channels_last']}, compile {s['compile']}, steady malloc {s['steady_malloc']}; median of "
        f"{s['windows']} windows x {s['repeats']} repeats of {s['steps']} "
        f"batches after {s['warmup']} warm-up batches; 1 image = 2 views",
        "", "## Resized-image cache (built once per resolution)", "",
        "| resolution | cached short side | build s | size MB |", "|---:|---:|---:|---:|",
    ]
    lines += [f"| {c['resolution']} | {c['short_side']} | {c['build_s']:.1f} | {c['megabytes']:.0f} |"
              for c in results["cache"]]
    if "data" in results:
        lines += data_table(results["data"], s["resolutions"], s["pipelines"])
    if "profile" in results:
        lines += profile_table(results["profile"], s["resolutions"], s["pipelines"])
    if "train" in results:
        moco = [r for r in results["train"] if r.get("method", "mocov2") == "mocov2"]
        if moco:
            lines += train_table(moco, s["archs"], s["resolutions"], train_runs(s["pipelines"]))
        lines += methods_table(results["train"], s["pipelines"])
    if "epoch" in results:
        lines += epoch_table(results["epoch"], s["resolutions"])
    if "e2e" in results:
        lines += endtoend_table(results["e2e"])
    if "stream" in results:
        lines += stream_table(results["stream"], results["cache"], results.get("data", []))
    return "\n".join(lines) + "\n"


def stream_table(rows: list[dict], cache: list[dict], data: list[dict]) -> list[str]:
    """Shards against the cache (build, size) and against the cache and the original files (read; the shards'
    rate is within epochs, the others' over shuffled batches with no epoch boundary)."""
    lines = ["", "## Streaming shards (LitData) against the memory-mapped cache and the original JPEG files", "",
             "| resolution | storage | build img/s | build / cache build | size MB | size / cache | "
             "read img/s | read / cache (fast) | read / original | s to an epoch's first batch |",
             "|---:|---|" + "---:|" * 8]
    for row in rows:
        built = next(c for c in cache if c["resolution"] == row["resolution"])
        read = {r["pipeline"]: r["images_per_s"] for r in data if r["resolution"] == row["resolution"]}
        cache_rate = row["images_per_s"] / read["fast"] if "fast" in read else None
        original_rate = row["images_per_s"] / read["original"] if "original" in read else None
        cells = [f"{row['build_images_per_s']:.0f}", f"{built['build_s'] / row['build_s']:.2f}x",
                 f"{row['megabytes']:.1f}", f"{row['megabytes'] / built['megabytes']:.2f}x",
                 f"{row['images_per_s']:.0f}", "-" if cache_rate is None else f"{cache_rate:.2f}x",
                 "-" if original_rate is None else f"{original_rate:.2f}x", f"{row['epoch_start_s']:.2f}"]
        lines.append(f"| {row['resolution']} | {row['storage']} | " + " | ".join(cells) + " |")
    return lines


def data_table(rows: list[dict], resolutions: list[int], pipelines: list[str]) -> list[str]:
    others = [name for name in pipelines if name != "original"]
    lines = ["", "## Data loading alone (images/s as ready two-view batches on the device, no model)", "",
             "| resolution | " + " | ".join(pipelines) + " | " + " | ".join(f"{n} / original" for n in others) + " |",
             "|" + "---:|" * (1 + len(pipelines) + len(others))]
    for resolution in resolutions:
        rate = {r["pipeline"]: r["images_per_s"] for r in rows if r["resolution"] == resolution}
        cells = [f"{rate[name]:.0f}" for name in pipelines] + [f"{rate[n] / rate['original']:.2f}x" for n in others]
        lines.append(f"| {resolution} | " + " | ".join(cells) + " |")
    return lines


def profile_table(rows: list[dict], resolutions: list[int], pipelines: list[str]) -> list[str]:
    lines = ["", "## Where the time goes (ms per image of two views, one CPU thread, no workers)", ""]
    for resolution in resolutions:
        found = {r["pipeline"]: r for r in rows if r["resolution"] == resolution}
        steps = [step for step in ORDER if any(step in found[name]["ms_per_image"] for name in pipelines)]
        lines += [f"{resolution} px:", "", "| step | " + " | ".join(pipelines) + " |",
                  "|---|" + "---:|" * len(pipelines)]
        for step in steps:
            cells = [f"{found[name]['ms_per_image'][step]:.2f}" if step in found[name]["ms_per_image"] else "-"
                     for name in pipelines]
            lines.append(f"| {step} | " + " | ".join(cells) + " |")
        total = {name: found[name]["total_ms_per_image"] for name in pipelines}
        lines.append("| **total** | " + " | ".join(f"**{total[name]:.2f}**" for name in pipelines) + " |")
        lines.append("| original / this | " + " | ".join(f"{total['original'] / total[name]:.2f}x"
                                                        for name in pipelines) + " |")
        lines.append("")
    return lines


def train_table(rows: list[dict], archs: list[str], resolutions: list[int], runs: list[tuple]) -> list[str]:
    project = [data for runner, data in runs if runner == "lightning"]
    header = ["arch", "resolution", "plain + original"]
    for data in project:
        header += [f"project + {data}", "/ plain"]
    header += ["peak MB plain", "peak MB project + original"]
    lines = ["", "## Pretraining throughput (images/s) and peak memory", "",
             "Ratios: each project run over the plain loop with the original pipeline.", "",
             "| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for arch in archs:
        for resolution in resolutions:
            run = {(r["runner"], r["data"]): r for r in rows if r["arch"] == arch and r["resolution"] == resolution}
            plain = run[("plain", "original")]
            cells = [arch, str(resolution), f"{plain['images_per_s']:.1f}"]
            for data in project:
                rate = run[("lightning", data)]["images_per_s"]
                cells += [f"{rate:.1f}", f"{rate / plain['images_per_s']:.3f}"]
            cells += [f"{plain['peak_memory_mb']:.0f}", f"{run[('lightning', 'original')]['peak_memory_mb']:.0f}"]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def methods_table(rows: list[dict], pipelines: list[str]) -> list[str]:
    """The project's images/s per method (when more than MoCo v2 ran), and each over MoCo v2's."""
    methods = list(dict.fromkeys(r.get("method", "mocov2") for r in rows))
    if methods == ["mocov2"]:
        return []
    project = [name for runner, name in train_runs(pipelines) if runner == "lightning"]
    header = ["method", "arch", "resolution"] + [f"project + {data}" for data in project]
    if "mocov2" in methods:
        header += [f"/ mocov2 ({data})" for data in project]
    lines = ["", "## Pretraining throughput per method (images/s, the project)", "",
             "| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    rate = {(r.get("method", "mocov2"), r["arch"], r["resolution"], r["data"]): r["images_per_s"] for r in rows
            if r["runner"] == "lightning"}
    for method, arch, resolution in dict.fromkeys((m, a, res) for m, a, res, _ in rate):
        cells = [method, arch, str(resolution)] + [f"{rate[method, arch, resolution, d]:.1f}" for d in project]
        if "mocov2" in methods:
            cells += [f"{rate[method, arch, resolution, d] / rate['mocov2', arch, resolution, d]:.2f}"
                      for d in project]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def epoch_table(rows: list[dict], resolutions: list[int]) -> list[str]:
    lines = ["", "## One epoch of the train split, end to end", "",
             "Full-CUB column: this epoch's seconds per image x 5,994 train images (extrapolated).", "",
             "| arch | resolution | images | plain + original s | project + fast s (whole fit s) | "
             "speed-up | full CUB epoch plain / project (min) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for resolution in resolutions:
        plain, project = (r for r in rows if r["resolution"] == resolution)
        lines.append(
            f"| {plain['arch']} | {resolution} | {plain['images']} | {plain['epoch_s']:.1f} | "
            f"{project['epoch_s']:.1f} ({project['fit_s']:.1f}) | {plain['epoch_s'] / project['epoch_s']:.2f}x "
            f"| {plain['full_cub_epoch_s'] / 60:.1f} / {project['full_cub_epoch_s'] / 60:.1f} |")
    return lines


def fmt_load(load: list[float]) -> str:
    return ", ".join(f"{value:.2f}" for value in load)


def endtoend_table(row: dict) -> list[str]:
    return ["", "## Whole short runs, end to end", "",
            f"{row['epochs']} epochs of {row['images_per_epoch']} images, {row['arch']} at {row['resolution']} px, "
            f"MoCo v2 (K {row['K']}, m 0.99), kNN every {row['knn_every']} epochs; each a fresh process, timed "
            "whole (start-up, epoch boundaries, checkpoints, kNN):", "",
            "| run | wall s (each run) | kNN top-1 at the end |", "|---|---:|---:|",
            f"| plain script | {row['plain_s']:.1f} ({', '.join(f'{x:.1f}' for x in row['plain_runs_s'])}) | "
            f"{fmt_knn(row['knn_top1']['plain'])} |",
            f"| project | {row['project_s']:.1f} ({', '.join(f'{x:.1f}' for x in row['project_runs_s'])}) | "
            f"{fmt_knn(row['knn_top1']['project'])} |",
            "", f"plain / project: **{row['speed_ratio']:.3f}** (1.0: as fast as the plain script)", "",
            *(f"- {name}: `{command}`" for name, command in row["commands"].items())]


def fmt_knn(values: list) -> str:
    return "-" if not values or values[-1] is None else f"{100 * values[-1]:.1f}%"
