"""Self-supervised pretraining with the method of the `method` group (its class: `method._target_`)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from s3l.callbacks.knn import KNNMonitor
from s3l.checkpoints import write_atomically
from s3l.config import stage_epochs
from s3l.data.datamodule import Transformed, loader
from s3l.data.transforms import eval_transform
from s3l.errors import S3LError
from s3l.methods.base import SSLMethod, build_method, method_class
from s3l.settings import PretrainSettings
from s3l.stages.build import load_init, pretrain_datamodule
from s3l.stages.training import TrainingStage

METHOD_STATE = "method_state.pt"


class PretrainStage(TrainingStage):
    """Pretraining on the training split without labels; the method's full state is exported beside the
    backbone, so that a next pretraining stage (multi-stage 112 -> 224) continues all of it."""

    Settings = PretrainSettings
    starts_from_nothing = True

    @property
    def method(self) -> type[SSLMethod]:
        return method_class(self.cfg.method)

    @property
    def forward_cost(self) -> float:
        return self.method.forward_cost

    def check_config(self) -> None:
        spec, epochs = self.spec, stage_epochs(self.cfg, self.spec)
        if spec.cfg.warmup_epochs >= epochs:
            capped = f" (trainer.max_epochs={self.cfg.trainer.max_epochs})" if epochs < spec.cfg.epochs else ""
            raise S3LError(
                f"{spec.key}.warmup_epochs={spec.cfg.warmup_epochs} leaves nothing of the {epochs} epochs this "
                f"stage trains{capped}: lower it, e.g. method.warmup_epochs=0"
            )
        self.method.check_config(self.cfg.method, spec)

    def check_run(self, train, world_size: int) -> None:
        self.method.check_run(self.cfg.method, self.spec, self.cfg.dataset.name, len(train), world_size)

    def build_module(self, train, world_size: int) -> SSLMethod:
        cfg = self.cfg
        return build_method(cfg.method, self.spec.cfg, cfg.architecture.stem, cfg.optimizer, world_size)

    def build_datamodule(self, train, test) -> L.LightningDataModule:
        return pretrain_datamodule(self.cfg, self.spec, train)

    def initialise(self, module: SSLMethod, source: Path | None) -> str:
        """A previous pretraining stage's full method state when it left one, else a backbone for the online
        network, copied into every target network."""
        if source is not None and source.is_dir() and (source / METHOD_STATE).is_file():
            return module.load_method_state(source / METHOD_STATE)
        init = load_init(module.backbone, source)
        module.sync_targets()
        return init

    def knn_monitor(self, train, test) -> KNNMonitor | None:
        knn, s = self.spec.cfg.get("knn"), self.spec.cfg
        if not knn or knn.every_n_epochs <= 0:
            return None
        if self.cfg.dataset.get("format") == "litdata":
            from s3l.data.stream import streamed_splits  # LitData only where it is used (an extra)

            train, test = streamed_splits(self.cfg, self.spec, train, test)
        transform = eval_transform(s.resolution)
        loaders = [loader(Transformed(split, transform), s.batch_size, self.cfg.dataset.num_workers)
                   for split in (train, test)]
        return KNNMonitor(*loaders, every_n_epochs=knn.every_n_epochs, k=knn.k, temperature=knn.temperature,
                          at_start=knn.at_start)

    def metrics(self, module: SSLMethod, logged: dict) -> dict:
        if "knn/acc1" in logged:
            logged["knn_top1"] = logged["knn/acc1"]
        if "knn/acc1_init" in logged:
            logged["knn_top1_init"] = logged["knn/acc1_init"]
        return logged

    def export_meta(self) -> dict:
        return {"kind": self.spec.cfg.kind, "method": self.cfg.method.name}

    def export(self, stage_dir: Path, module: SSLMethod, trainer: L.Trainer) -> None:
        super().export(stage_dir, module, trainer)
        write_atomically(stage_dir / METHOD_STATE, lambda tmp: torch.save(module.state_dict(), tmp))
