"""DDP on 2 CPU processes (gloo): MoCo's queue and encoders stay identical on every rank, and `trainer=ddp`
runs of train.py (single run and Hydra multirun) finish with one output directory per run."""

import json
import os

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from s3l.distributed import concat_all_gather
from s3l.methods.mocov2 import MoCoV2
from tests.conftest import CUB_SUBSET
from tests.test_distributed import _free_port

WORLD = 2
BATCH = 4          # per process: the global batch is 8
DIM, K = 8, 16     # the queue holds exactly two global batches
MOMENTUM = 0.5     # far from 1, so one momentum update visibly moves the key encoder


def _tiny_moco(m: float) -> MoCoV2:
    torch.manual_seed(0)  # the same initial encoders and queue on every rank, as Lightning's seed_everything
    return MoCoV2(
        architecture="resnet10", stem="imagenet", dim=DIM, K=K, m=m, T=0.2, mlp=True, bn_splits=1,
        lr=0.03, momentum=0.9, weight_decay=1e-4, lr_schedule="cosine_epoch",
    )


def _keys(rank: int, step: int) -> torch.Tensor:
    """The keys rank `rank` enqueues at `step`: different on every rank and step, known to all of them."""
    generator = torch.Generator().manual_seed(100 * step + rank)
    return F.normalize(torch.randn(BATCH, DIM, generator=generator), dim=1)


def _global_keys(step: int) -> torch.Tensor:
    return torch.cat([_keys(rank, step) for rank in range(WORLD)])


def _run_on_two_ranks(fn, *args) -> None:
    # fork: the children inherit the imported torch and s3l (seconds saved); failures re-raise here.
    mp.start_processes(fn, args=(_free_port(), *args), nprocs=WORLD, join=True, start_method="fork")


def _queue_on_rank(rank: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        model = _tiny_moco(m=0.99)
        initial = model.queue.clone()
        model.dequeue_and_enqueue(_keys(rank, 0))
        assert torch.equal(model.queue[:, : 2 * BATCH], _global_keys(0).T)  # rank 0's keys, then rank 1's
        assert torch.equal(model.queue[:, 2 * BATCH :], initial[:, 2 * BATCH :])
        assert int(model.queue_ptr) == 2 * BATCH  # advanced by the global batch, not the local one

        model.dequeue_and_enqueue(_keys(rank, 1))
        assert int(model.queue_ptr) == 0  # K = 2 global batches: wrapped around
        model.dequeue_and_enqueue(_keys(rank, 2))
        assert torch.equal(model.queue, torch.cat([_global_keys(2), _global_keys(1)]).T)
        assert int(model.queue_ptr) == 2 * BATCH

        queues = concat_all_gather(model.queue.unsqueeze(0))
        assert torch.equal(queues[0], queues[1])
    finally:
        dist.destroy_process_group()


def test_queue_is_identical_on_every_rank_and_holds_all_ranks_keys_in_rank_order():
    _run_on_two_ranks(_queue_on_rank)


class _TwoViews(Dataset):
    """Random (query view, key view) pairs; DistributedSampler gives each rank different ones."""

    def __init__(self, size: int) -> None:
        self.images = torch.randn(size, 2, 3, 16, 16, generator=torch.Generator().manual_seed(1))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return [self.images[index, 0], self.images[index, 1]], 0


class _BeforeLastStep(L.Callback):
    """Keeps the encoders as they are before the last training step, and every batch's first image."""

    def __init__(self) -> None:
        self.first_images: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.first_images.append(batch[0][0][0].clone())
        self.query = [p.detach().clone() for p in pl_module.encoder_q.parameters()]
        self.key = [p.detach().clone() for p in pl_module.encoder_k.parameters()]


def _flat(params) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in params])


def _train_on_rank(rank: int, port: int, root: str) -> None:
    torch.set_num_threads(1)
    # What Lightning's own launcher sets for the processes it starts (LightningEnvironment reads them).
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank), NODE_RANK="0")
    steps = 3
    model = _tiny_moco(m=MOMENTUM)
    initial_query = _flat(model.encoder_q.parameters())
    snapshot = _BeforeLastStep()
    trainer = L.Trainer(
        accelerator="cpu", devices=WORLD, strategy="ddp", max_epochs=1, limit_train_batches=steps,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[snapshot], default_root_dir=root,
    )
    trainer.fit(model, DataLoader(_TwoViews(WORLD * BATCH * steps), batch_size=BATCH))

    assert trainer.world_size == WORLD and trainer.global_step == steps
    query, key = _flat(model.encoder_q.parameters()), _flat(model.encoder_k.parameters())
    assert not torch.allclose(query, initial_query)  # it trained
    # The key encoder is the momentum average of its previous self and the query encoder it saw.
    expected_key = MOMENTUM * _flat(snapshot.key) + (1 - MOMENTUM) * _flat(snapshot.query)
    torch.testing.assert_close(key, expected_key, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(key, query)

    everyone = {
        name: concat_all_gather(tensor.unsqueeze(0))
        for name, tensor in [("query", query), ("key", key), ("queue", model.queue),
                             ("images", torch.stack(snapshot.first_images))]
    }
    assert not torch.equal(everyone["images"][0], everyone["images"][1])  # each rank saw different data
    for name in ("query", "key", "queue"):
        assert torch.equal(everyone[name][0], everyone[name][1]), f"{name} differs between the ranks"


@pytest.mark.slow
def test_encoders_and_queue_stay_identical_across_ranks_while_training(tmp_path):
    _run_on_two_ranks(_train_on_rank, str(tmp_path))


# The digits demo, 2 processes: 2 steps per stage, no kNN monitor (each rank would embed all 1,797 images).
PER_STAGE_STEPS, GLOBAL_BATCH = 2, 16
TIMEOUT_S = 300  # ranks that disagree on a collective wait for each other forever: fail instead
DDP_TINY = [
    "trainer=ddp", "trainer.accelerator=cpu", f"trainer.devices={WORLD}", "debug=tiny",
    "chain=pretrain_finetune", "dataset.num_workers=0", f"method.bn_splits={WORLD}",
    f"method.batch_size={GLOBAL_BATCH}", f"stages.finetune.batch_size={GLOBAL_BATCH}",
    f"trainer.limit_train_batches={PER_STAGE_STEPS}",
    "trainer.limit_val_batches=1", "stages.pretrain.knn.every_n_epochs=0",
]


def _run_dirs(log_dir):
    """Directories holding a whole run's results.json (stage directories hold a config.yaml instead)."""
    results = log_dir.rglob("results.json")
    return sorted(p.parent for p in results if (p.parent / "config_resolved.yaml").is_file())


@pytest.mark.slow
def test_ddp_run_trains_every_stage_on_both_processes_into_one_run_directory(train):
    run = train(DDP_TINY, timeout=TIMEOUT_S)
    assert run.returncode == 0, run.output[-3000:]
    (run_dir,) = _run_dirs(run.log_dir)
    assert [p.name for p in run.log_dir.iterdir()] == ["demo"] and len(list(run.log_dir.glob("*/*"))) == 1
    results = run.results()
    for stage in results["stages"]:
        # Each step: 8 images on each process, counted over both as the global batch of 16.
        assert stage["cost"]["train_images"] == PER_STAGE_STEPS * GLOBAL_BATCH, stage
    assert 0.0 <= results["final"]["metrics"]["top1_last"] <= 1.0
    assert (run_dir / "1_finetune" / "backbone.pt").is_file()
    assert "GLOBAL_RANK: 1" in run.output  # rank 1 really ran (started by Lightning as a second train.py)
    assert (run_dir / "train_ddp_process_1.log").is_file()  # ... with Hydra's output in this run directory
    assert run.stdout.count("score last") == 1  # one results table: rank 1 prints none


@pytest.mark.slow
def test_ddp_multirun_writes_each_job_once_in_the_sweep_directory(train):
    # hydra.mode=MULTIRUN is -m, which would have to precede the overrides run_train puts first.
    run = train([*DDP_TINY, "resolution=16,32", "hydra.mode=MULTIRUN"], timeout=TIMEOUT_S)
    assert run.returncode == 0, run.output[-3000:]
    job_dirs = _run_dirs(run.log_dir)
    assert len(job_dirs) == 2, job_dirs
    (sweep_dir,) = {job.parent for job in job_dirs}
    assert list(run.log_dir.glob("*/*")) == [sweep_dir]  # no stray run or sweep directory of rank 1
    pretrain_px = [json.loads((job / "results.json").read_text())["pretrain_resolution"] for job in job_dirs]
    assert sorted(pretrain_px) == [16, 32]
    for job in job_dirs:
        assert (job / "1_finetune" / "backbone.pt").is_file()
        assert (job / "train_ddp_process_1.log").is_file()  # rank 1 ran this job in this directory
    assert run.stdout.count("score last") == 2  # one table per job, from rank 0 only



@pytest.mark.slow
def test_ddp_simclr_pretraining_gathers_the_global_batch_on_both_processes(train):
    """SimCLR's global negatives under a real 2-process DDP run (the loss's gradient all-gather)."""
    run = train([*DDP_TINY, "method=simclr", "stage=pretrain", "method.warmup_epochs=0", "stage.knn.every_n_epochs=0"],
                timeout=TIMEOUT_S)
    assert run.returncode == 0, run.output[-3000:]
    (pretrain,) = run.results()["stages"]
    assert pretrain["cost"]["train_images"] == PER_STAGE_STEPS * GLOBAL_BATCH
    assert pretrain["metrics"]["train/loss"] > 0 and "GLOBAL_RANK: 1" in run.output


@pytest.mark.slow
def test_ddp_streamed_pretraining_shares_the_shards_between_the_processes(train, tmp_path):
    """dataset.format=litdata under a real 2-process DDP run: one build (the other rank waits for it), each rank
    streams its half of the batch, and the kNN monitor reads both splits whole from their shards on each rank."""
    pytest.importorskip("litdata")
    run = train([*DDP_TINY, "stage=pretrain", "experiment=cub_112_mocov2", f"dataset.root={CUB_SUBSET}",
                 "architecture=resnet10", "architecture.stem=imagenet", "resolution=32", "dataset.format=litdata",
                 f"dataset.stream.dir={tmp_path / 'shards'}", "stage.knn.every_n_epochs=1"], timeout=TIMEOUT_S)
    assert run.returncode == 0, run.output[-3000:]
    (stage,) = run.results()["stages"]
    assert stage["cost"]["train_images"] == PER_STAGE_STEPS * GLOBAL_BATCH
    assert 0.0 < stage["metrics"]["knn_top1"] <= 1.0
    assert len(list((tmp_path / "shards").glob("cub200_*"))) == 2  # train and test, built once
