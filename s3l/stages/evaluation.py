"""Evaluation stages of a fixed backbone: per-stage linear probes, k-shot, weighted kNN and feature export.

Each follows pretraining in a chain (`init: previous`) or runs alone on any checkpoint (`stage=probe
stage.init=/path/to/backbone.pt`). The backbone is never trained: one pass embeds the train and test splits
(Resize + CenterCrop at the stage's resolution, as the kNN monitor), and the small classifiers train on the
cached features. Under DDP, rank 0 works and the other processes wait for its results.json.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import OmegaConf
from torch import Tensor

from s3l.callbacks.cost import peak_memory_mb
from s3l.callbacks.knn import weighted_knn_predict
from s3l.data.datamodule import Transformed, loader
from s3l.data.transforms import eval_transform
from s3l.errors import S3LError
from s3l.evaluation.embedding import plot_embedding, save_features
from s3l.evaluation.features import extract, stage_names
from s3l.evaluation.kshot import kshot_eval
from s3l.evaluation.linear import train_linear_heads
from s3l.metrics import accuracies, voc_map
from s3l.models.resnet import build_backbone
from s3l.settings import FeaturesSettings, KNNStageSettings, KShotSettings, ProbeSettings
from s3l.stages.base import Stage, write_text
from s3l.stages.build import forward_flops, init_source, load_init
from s3l.stages.training import RESULTS

log = logging.getLogger("s3l")


def evaluation_device(accelerator: str) -> torch.device:
    """The device the trainer settings ask for: the process's GPU when there is one and it is allowed."""
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class EvaluationStage(Stage):
    """Embeds the dataset with the stage's backbone once and scores it; `evaluate` is the kind's part."""

    # Whether the kind needs one integer label per image (k-shot and kNN vote for one class).
    single_label_only = False

    def check_config(self) -> None:
        if self.single_label_only and self.cfg.dataset.metric == "map":
            raise S3LError(f"{self.spec.key} ({self.spec.cfg.kind}) needs one label per image, but "
                           f"dataset={self.cfg.dataset.name} is multi-label: use stage probe or transfer_linear")

    def evaluate(self, backbone, device: torch.device, train, test, stage_dir: Path) -> dict:
        """The kind's metrics (fractions), with "score" the headline in the dataset's metric."""
        raise NotImplementedError

    def embed(self, backbone, device: torch.device, split, stages: list[str] | None = None
              ) -> tuple[dict[str, Tensor], Tensor]:
        """Features (per ResNet stage, or {"final": ...}) and labels of one split, counted for the cost."""
        s = self.spec.cfg
        data = loader(Transformed(split, eval_transform(s.resolution)), s.batch_size, self.cfg.dataset.num_workers)
        self.images += len(split)
        return extract(backbone, data, device, stages)

    def embed_final(self, backbone, device: torch.device, train, test) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The final features and labels of the train and the test split."""
        train_x, train_y = self.embed(backbone, device, train)
        test_x, test_y = self.embed(backbone, device, test)
        return train_x["final"], train_y, test_x["final"], test_y

    def with_score(self, values: dict[str, float]) -> dict[str, float]:
        """`values` ({"top1", "mean_per_class"}, or {"map"}) with "score": the one the dataset's metric names."""
        return {**values, "score": values[self.cfg.dataset.metric]}

    def run(self, stage_dir: Path, previous_dir: Path | None, datasets: tuple) -> dict:
        cfg, spec, s = self.cfg, self.spec, self.spec.cfg
        if rank_zero_only.rank == 0:
            train, test = datasets
            start = time.perf_counter()
            backbone = build_backbone(s.architecture, cfg.architecture.stem)
            source = init_source(spec, previous_dir)
            init = load_init(backbone, source)
            device = evaluation_device(cfg.trainer.accelerator)
            log.info("stage %s (%s, %s, %d px): init = %s, on %s", spec.name, s.kind, s.architecture,
                     s.resolution, init, device)
            torch.manual_seed(cfg.seed)
            self.images = 0
            metrics = self.evaluate(backbone.to(device), device, train, test, stage_dir)
            result = self.base_result(stage_dir, datasets, 0, 0)
            result.update(metrics=metrics, init=init, init_from=None if source is None else str(source))
            result["cost"] = self.cost(time.perf_counter() - start)
            write_text(stage_dir / "config.yaml", OmegaConf.to_yaml(s, resolve=True))
            write_text(stage_dir / RESULTS, json.dumps(result, indent=2))
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        return json.loads((stage_dir / RESULTS).read_text())

    def cost(self, seconds: float) -> dict:
        """The cost record of a stage that only runs the backbone forward (once per embedded image)."""
        forward = forward_flops(self.cfg, self.spec)
        return {"wall_clock_s": round(seconds, 2), "train_images": 0, "embedded_images": self.images,
                "images_per_s": round(self.images / seconds, 2), "peak_memory_mb": round(peak_memory_mb(), 1),
                "forward_gflops_per_image": round(forward / 1e9, 4), "train_pflops": self.images * forward / 1e15,
                "device_hours": seconds / 3600, "attempts": 1}


class ProbeStage(EvaluationStage):
    """A linear probe on every ResNet stage (conv2..conv5 pooled, or what the architecture has), trained on
    features of one pass: what each depth of the network keeps, and what the small architecture loses."""

    Settings = ProbeSettings

    def evaluate(self, backbone, device, train, test, stage_dir: Path) -> dict:
        s = self.spec.cfg
        stages = list(s.stages) if s.stages else stage_names(backbone)
        train_x, train_y = self.embed(backbone, device, train, stages)
        test_x, test_y = self.embed(backbone, device, test, stages)
        multilabel = self.cfg.dataset.metric == "map"
        heads = train_linear_heads(train_x, train_y, test_x, test_y, len(train.classes), epochs=s.epochs, lr=s.lr,
                                   weight_decay=s.weight_decay, batch_size=s.head_batch_size, seed=self.cfg.seed,
                                   device=device, multilabel=multilabel)
        metrics: dict = {}
        for name, head in heads.items():
            values = {"map": voc_map(head["scores"], test_y)} if multilabel else head
            metrics.update({f"{name}/{key}": value for key, value in self.with_score(values).items()})
        metrics.update(stages=stages, score=metrics[f"{stages[-1]}/score"])
        return metrics


class KShotStage(EvaluationStage):
    """k images per class (for each k of `shots`) over a fixed list of seeds: mean +- std of the test top-1."""

    Settings = KShotSettings
    single_label_only = True

    def evaluate(self, backbone, device, train, test, stage_dir: Path) -> dict:
        s = self.spec.cfg
        train_x, train_y, test_x, test_y = self.embed_final(backbone, device, train, test)
        runs = kshot_eval(train_x, train_y, test_x, test_y, len(train.classes),
                          shots=tuple(s.shots), seeds=tuple(s.seeds), classifier=s.classifier, epochs=s.epochs,
                          lr=s.lr, weight_decay=s.weight_decay, device=device)
        metrics: dict = {}
        for shots, run in runs.items():
            metrics.update({f"{shots}shot/mean": run["mean"], f"{shots}shot/std": run["std"],
                            f"{shots}shot/runs": run["runs"]})
        metrics["score"] = runs[max(runs)]["mean"]  # the most shots: the headline of a transfer table
        return metrics


class KNNStage(EvaluationStage):
    """The weighted kNN (MoCo CIFAR demo: cosine similarity, weights exp(sim / T)) of the stage's backbone."""

    Settings = KNNStageSettings
    single_label_only = True

    def evaluate(self, backbone, device, train, test, stage_dir: Path) -> dict:
        s = self.spec.cfg
        train_x, train_y, test_x, test_y = self.embed_final(backbone, device, train, test)
        predictions = weighted_knn_predict(train_x, train_y, test_x, len(train.classes),
                                           k=s.k, temperature=s.temperature)
        return self.with_score(accuracies(predictions.cpu(), test_y, len(train.classes)))


class FeaturesStage(EvaluationStage):
    """Writes the backbone's embeddings of both splits (features.npz) and a 2-D map of the test split
    (t-SNE or UMAP, coloured by class) as embedding.png."""

    Settings = FeaturesSettings

    def evaluate(self, backbone, device, train, test, stage_dir: Path) -> dict:
        s = self.spec.cfg
        train_x, train_y, test_x, test_y = self.embed_final(backbone, device, train, test)
        stage_dir.mkdir(parents=True, exist_ok=True)
        save_features(stage_dir / "features.npz", train_x, train_y, test_x, test_y, list(train.classes))
        metrics = {"feature_dim": int(train_x.shape[1]), "train_images": len(train),
                   "test_images": len(test), "features": str(stage_dir / "features.npz")}
        if s.embedding != "none":
            labels = test_y if test_y.dim() == 1 else test_y.clamp(min=0).argmax(dim=1)  # multi-label: first class
            plot_embedding(test_x, labels, list(train.classes), stage_dir / "embedding.png", method=s.embedding,
                           seed=self.cfg.seed, max_points=s.max_points,
                           title=f"{self.cfg.dataset.name} test split, {s.architecture} ({s.embedding})")
            metrics["embedding"] = str(stage_dir / "embedding.png")
        return metrics
