"""The GPU benchmark's projection of the whole CUB recipe, its targets, its markdown, and the docs section."""

from __future__ import annotations

from pathlib import Path

from s3l.errors import S3LError

# The recipe of experiment=cub_112_mocov2 on the full CUB-200-2011 (configs/method/mocov2.yaml,
# configs/stage/finetune.yaml and pretrain.yaml's kNN monitor; the test split is evaluated every epoch).
PRETRAIN_EPOCHS, FINETUNE_EPOCHS, KNN_EVERY = 200, 120, 10
TRAIN_IMAGES, TEST_IMAGES = 5994, 5794
TARGET_MINUTES, BUSY_TARGET, RATIO_TARGET = 15.0, 0.90, 0.97
START, END = "<!-- bench-gpu:start -->", "<!-- bench-gpu:end -->"
GPU_COMMAND = """\
# here, once: the CUB subset and the pure-Python packages the GPU image lacks (hydra-core, omegaconf,
# antlr4), copied into the git-ignored bench_data/ (about 50 MB)
make bench-gpu-data
# on the GPU machine (device tool: run, carry ["bench_data"], timeout_s 600); about 6 of its 10 minutes
set -o pipefail; PYTHONPATH=bench_data/site-packages PYTHONUNBUFFERED=1 \\
    python3 -m s3l.bench.gpu --out $OUT/gpu 2>&1 | tee $OUT/gpu.log
# here, with the files that came back: this section of docs/benchmarks.md from the GPU's bench.json
.venv/bin/python -m s3l.bench.gpu --from-json <files_at>/gpu/bench.json"""


def fastest(rows: list[dict], **match) -> dict | None:
    """The fastest measured row whose fields equal `match`."""
    done = [r for r in rows if r["status"] == "ok" and all(r.get(k) == v for k, v in match.items())]
    return max(done, key=lambda r: r["images_per_s"], default=None)


def projection(results: dict) -> dict:
    """Wall-clock of the whole recipe from the measured rates (the fastest data path of each stage), shown
    as its formula. Start-up, checkpoints and the cache build are not in it."""
    s = results["settings"]
    pretrain = fastest(results["pretrain"], resolution=s["recipe_resolution"], runner="project")
    finetune = fastest(results["finetune"])
    knn = fastest(results["forward"], purpose="kNN monitor")
    evaluation = fastest(results["forward"], purpose="test evaluation")
    needed = {"pretraining": pretrain, "fine-tuning": finetune, "kNN forward": knn, "test forward": evaluation}
    missing = [name for name, row in needed.items() if row is None]
    if missing:
        return {"status": "not available: no rate for " + ", ".join(missing)}
    evaluations = PRETRAIN_EPOCHS // KNN_EVERY
    terms = [
        ("pretraining", PRETRAIN_EPOCHS * TRAIN_IMAGES, f"{PRETRAIN_EPOCHS} x {TRAIN_IMAGES:,}", pretrain),
        ("kNN monitor", evaluations * (TRAIN_IMAGES + TEST_IMAGES),
         f"{evaluations} x ({TRAIN_IMAGES:,} + {TEST_IMAGES:,})", knn),
        ("fine-tuning", FINETUNE_EPOCHS * TRAIN_IMAGES, f"{FINETUNE_EPOCHS} x {TRAIN_IMAGES:,}", finetune),
        ("test evaluation", FINETUNE_EPOCHS * TEST_IMAGES, f"{FINETUNE_EPOCHS} x {TEST_IMAGES:,}", evaluation),
    ]
    rows = [{"term": name, "images": images, "images_per_s": row["images_per_s"],
             "seconds": images / row["images_per_s"],
             "formula": f"{count} images / {row['images_per_s']:,.0f} img/s ({row['stage']}, "
                        f"{row['resolution']} px, {row['data']})"} for name, images, count, row in terms]
    total = sum(row["seconds"] for row in rows)
    return {"status": "ok", "terms": rows, "total_s": total, "target_minutes": TARGET_MINUTES,
            "met": total < TARGET_MINUTES * 60}


def targets(results: dict) -> list[dict]:
    """The issue's GPU targets, each met, missed or not measured, with the measured value."""
    s, busy = results["settings"], results["busy"]
    res = s["recipe_resolution"]
    fraction = busy.get("fraction") if busy["status"] == "ok" else None
    if fraction is None:
        busy_value, busy_status = busy.get("fraction_note", busy["status"]), "not measured"
    elif busy["data"] != "resident":
        busy_value, busy_status = f"{fraction:.0%} on the {busy['data']} path (resident did not run)", "not measured"
    else:
        busy_value, busy_status = f"{fraction:.0%}", verdict(fraction >= BUSY_TARGET)
    ratios = plain_ratios(results["pretrain"], res)
    ratio_value = ", ".join(f"{data} {ratio:.3f}" for data, ratio in ratios.items()) or "no pair ran"
    plan = results["projection"]
    plan_value = f"{plan['total_s'] / 60:.1f} min" if plan["status"] == "ok" else plan["status"]
    return [
        {"target": f"GPU busy >= {BUSY_TARGET:.0%} during {res} px pretraining on the resident path",
         "value": busy_value, "status": busy_status},
        {"target": f"project / plain loop >= {RATIO_TARGET} on the resident path ({res} px; the others beside it)",
         "value": ratio_value,
         "status": verdict(ratios["resident"] >= RATIO_TARGET) if "resident" in ratios else "not measured"},
        {"target": f"whole CUB recipe projected under {TARGET_MINUTES:.0f} min on one GPU", "value": plan_value,
         "status": verdict(plan["met"]) if plan["status"] == "ok" else "not measured"},
    ]


def verdict(met: bool) -> str:
    return "met" if met else "missed"


def plain_ratios(rows: list[dict], resolution: int) -> dict[str, float]:
    """project / plain images/s per data path at one resolution, where both ran."""
    rate = {(r["data"], r["runner"]): r["images_per_s"] for r in rows
            if r["resolution"] == resolution and r["status"] == "ok"}
    return {data: rate[data, "project"] / rate[data, "plain"] for data, runner in rate
            if runner == "plain" and (data, "project") in rate}


def markdown(results: dict) -> str:
    """The GPU section of docs/benchmarks.md (also bench.md)."""
    m, s = results["machine"], results["settings"]
    heading = f"## On a GPU: {m['device']}, {results['date']}"
    if results["tiny"]:
        heading = f"## On a GPU: not run yet (tiny CPU check on {m['device']}, {results['date']})"
    lines = [heading, "",
             "Written by `python -m s3l.bench.gpu` (`make bench-gpu`); the text between the bench-gpu markers is "
             "rewritten by each run.", ""]
    if results["tiny"]:
        lines += ["**Tiny mode** (resnet10, 32 px, batch 8, on the CPU): it shows that the code runs; its numbers "
                  "say nothing about a GPU.", ""]
    lines += [
        f"- machine: {m['device']}; {m['cpu']}, {m['cores']} cores; torch {m['torch']}, lightning "
        f"{m['lightning']}, Python {m['python']}; whole benchmark {results['total_s'] / 60:.1f} min",
        f"- command: `{results['command']}`",
        f"- {s['arch']}, MoCo v2 batch {s['batch']}, fine-tuning batch {s['finetune_batch']} with mixup, "
        f"{s['workers']} workers, precision {s['precision']}, channels_last {s['channels_last']}, "
        f"cudnn.benchmark {s['cudnn_benchmark']}, compile {s['compile']}; median of {s['windows']} windows of "
        f"{s['steps']} batches after {s['warmup']}; all runs in one process (CUDA peak memory reset per run); "
        "a pretraining image is 2 views",
        "", "To run it again:", "", "```", GPU_COMMAND, "```",
    ]
    lines += pretrain_table(results["pretrain"]) + finetune_table(results["finetune"], results["forward"])
    lines += busy_lines(results["busy"]) + projection_lines(results["projection"])
    lines += ["", "### Targets", ""]
    lines += [f"- {t['target']}: **{t['status']}** ({t['value']})" for t in results["targets"]]
    return "\n".join(lines) + "\n"


def cell(row: dict | None, key: str) -> str:
    """A measured value, or (in the images/s column only) why the run has none."""
    if row is None or (row["status"] != "ok" and key != "images_per_s"):
        return "-"
    return f"{row[key]:,.0f}" if row["status"] == "ok" else row["status"]


def pretrain_table(rows: list[dict]) -> list[str]:
    lines = ["", "### MoCo v2 pretraining (images/s; peak MB: CUDA max allocated, on a CPU the process's peak RSS)",
             "",
             "| resolution | data path | project img/s | plain loop img/s | project / plain | peak MB project "
             "| peak MB plain |", "|---:|---|---:|---:|---:|---:|---:|"]
    for resolution, data in dict.fromkeys((r["resolution"], r["data"]) for r in rows):
        run = {r["runner"]: r for r in rows if r["resolution"] == resolution and r["data"] == data}
        project, plain = run["project"], run.get("plain")
        ratio = plain_ratios([project] + ([plain] if plain else []), resolution).get(data)
        lines.append(f"| {resolution} | {data} | {cell(project, 'images_per_s')} | {cell(plain, 'images_per_s')} "
                     f"| {'-' if ratio is None else f'{ratio:.3f}'} | {cell(project, 'peak_memory_mb')} "
                     f"| {cell(plain, 'peak_memory_mb')} |")
    return lines


def finetune_table(finetune: list[dict], forward: list[dict]) -> list[str]:
    lines = ["", "### Fine-tuning (Classifier, mixup) and evaluation", "",
             "| run | resolution | batch | data path | img/s | peak MB |", "|---|---:|---:|---|---:|---:|"]
    for row in finetune + forward:
        name = "fine-tuning" if row["stage"] == "finetune" else f"forward ({row['purpose']})"
        lines.append(f"| {name} | {row['resolution']} | {row['batch']} | {row['data']} "
                     f"| {cell(row, 'images_per_s')} | {cell(row, 'peak_memory_mb')} |")
    lines += ["", "The forward rows time the model alone on a batch held on the device (test images, eval "
              "transform): what evaluation costs when its data is resident."]
    return lines


def busy_lines(busy: dict) -> list[str]:
    lines = ["", "### GPU busy fraction", ""]
    if busy["status"] != "ok":
        return lines + [f"{busy['resolution']} px pretraining, {busy['data']} path: {busy['status']}"]
    if busy["fraction"] is None:
        return lines + [f"{busy['resolution']} px pretraining, {busy['data']} path: {busy['fraction_note']}"]
    return lines + [
        f"{busy['resolution']} px pretraining, {busy['data']} path, {busy['steps']} steps under torch.profiler: "
        f"kernels {busy['kernel_s'] * 1e3:.1f} ms (union of their intervals) in {busy['window_s'] * 1e3:.1f} ms "
        f"of wall time = **{busy['fraction']:.1%}** busy (a lower bound: the profiler adds host time per launch)"]


def projection_lines(plan: dict) -> list[str]:
    lines = ["", "### Projection of the whole CUB recipe (full CUB-200-2011, one GPU)", ""]
    if plan["status"] != "ok":
        return lines + [plan["status"]]
    lines += ["```"] + [f"{t['term']:<16} {t['formula']:<78} = {t['seconds']:7.1f} s" for t in plan["terms"]]
    lines += [f"{'total':<16} {'':<78} = {plan['total_s']:7.1f} s = {plan['total_s'] / 60:.1f} min", "```", "",
              f"Target under {plan['target_minutes']:.0f} min: **{verdict(plan['met'])}**. Each stage at its "
              "fastest measured data path; start-up, checkpoints and the cache build are not in it."]
    return lines


def rewrite_docs(path: Path, section: str) -> None:
    """Replace the text between the bench-gpu markers of `path` with `section`; the rest stays as it is."""
    text, start, end = docs_section(path)
    path.write_text(text[: start + len(START)] + "\n" + section + text[end:])


def docs_section(path: Path) -> tuple[str, int, int]:
    """The text of `path` and where its bench-gpu markers are; one S3LError line if it cannot be rewritten
    (checked before measuring too, so that a wrong --docs does not waste a GPU run)."""
    try:
        text = path.read_text()
    except OSError as error:
        raise S3LError(f"cannot read --docs {path} ({error.strerror}): pass the markdown file to rewrite") from None
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise S3LError(f"{path} has no {START} ... {END} markers to write the GPU section between")
    return text, start, end
