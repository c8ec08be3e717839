"""LitData shards (dataset.format=litdata): what they store, how ranks share them, and a resume mid-epoch."""

import os
import socket

import lightning as L
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from omegaconf import OmegaConf

from s3l.callbacks.checkpointing import LastCheckpoint
from s3l.data.cache import load_resized, stored_size
from s3l.data.datasets import CUB200, ImageFolderSplit
from s3l.errors import S3LError
from tests.conftest import CUB_SUBSET, HYMENOPTERA

pytest.importorskip("litdata")
from litdata import StreamingDataLoader, StreamingDataset  # noqa: E402

from s3l.data import stream  # noqa: E402

SIDE = 40
JPEG_QUALITY = 95
# Quality 95, no chroma subsampling, at 40 px (the hardest case: a few pixels per feather): mean absolute error
# per image below 4 grey levels and 2.5 on average (measured: worst image 3.0, average 2.2 on hymenoptera).
JPEG_IMAGE_TOLERANCE, JPEG_MEAN_TOLERANCE = 4.0, 2.5


def settings(root, storage="raw", chunk_bytes="64MB"):
    return OmegaConf.create({"dir": str(root), "storage": storage, "quality": JPEG_QUALITY, "build_workers": 2,
                             "chunk_bytes": chunk_bytes, "max_cache_size": "1GB"})


@pytest.fixture(scope="module")
def cub():
    return CUB200(str(CUB_SUBSET), "train")


@pytest.fixture(scope="module")
def hymenoptera():
    return ImageFolderSplit(str(HYMENOPTERA), "train")


def expected_pixels(dataset, index: int) -> np.ndarray:
    """The folder's image as the memory-mapped cache stores it: resized so that its short side is SIDE."""
    path = dataset.samples[index][0]
    return load_resized(path, stored_size(path, SIDE))


@pytest.mark.parametrize("name", ["cub", "hymenoptera"])
@pytest.mark.parametrize("storage", ["raw", "jpeg"])
def test_shards_read_back_the_folder_images(request, tmp_path, name, storage):
    dataset = request.getfixturevalue(name)
    location = stream.build_shards(dataset, "train", SIDE, settings(tmp_path, storage))
    shards = stream.ShardImages(location, "1GB")
    assert len(shards) == len(dataset.samples)
    seen, errors = [], []
    for i in range(len(shards)):
        image, label = shards[i]
        index = int(shards.stream[i]["index"])
        seen.append(index)
        assert label == dataset.samples[index][1]
        got, want = np.asarray(image), expected_pixels(dataset, index)
        assert got.shape == want.shape
        if storage == "raw":
            assert np.array_equal(got, want)  # lossless
        else:
            errors.append(np.abs(got.astype(int) - want.astype(int)).mean())
    assert sorted(seen) == list(range(len(dataset.samples)))
    if storage == "jpeg":
        assert max(errors) < JPEG_IMAGE_TOLERANCE and np.mean(errors) < JPEG_MEAN_TOLERANCE


def test_shards_are_built_once_and_keyed_by_split_size_and_storage(tmp_path, cub):
    first = stream.build_shards(cub, "train", SIDE, settings(tmp_path))
    stamp = os.stat(os.path.join(first, "index.json")).st_mtime_ns
    assert stream.build_shards(cub, "train", SIDE, settings(tmp_path)) == first
    assert os.stat(os.path.join(first, "index.json")).st_mtime_ns == stamp  # reused, not rebuilt
    others = {stream.build_shards(cub, "test", SIDE, settings(tmp_path)),
              stream.build_shards(cub, "train", SIDE + 8, settings(tmp_path)),
              stream.build_shards(cub, "train", SIDE, settings(tmp_path, "jpeg"))}
    assert first not in others and len(others) == 3
    assert not list(tmp_path.glob(".*.tmp-*"))  # no temporary folder left behind


def test_remote_shards_are_read_where_they_are_and_never_built(cub):
    location = stream.build_shards(cub, "train", SIDE, settings("s3://bucket/shards/"))
    assert location.startswith("s3://bucket/shards/cub200_train_300img_40px_raw_")


def test_a_dataset_without_files_is_refused_in_one_line():
    with pytest.raises(S3LError, match="needs a dataset read from files"):
        stream.build_shards(object(), "train", SIDE, settings("/tmp"))


class Indices(stream.StreamedViews):
    """The streamed training split, yielding each sample's index instead of its views."""

    def __getitem__(self, index):
        return int(StreamingDataset.__getitem__(self, index)["index"])


def _rank_indices(rank: int, world: int, port: int, location: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        views = Indices(location, transform=None, seed=3, max_cache_size="1GB")
        loader = StreamingDataLoader(views, batch_size=10, num_workers=0, drop_last=True)
        np.save(f"{out}/rank{rank}.npy", np.concatenate([batch.numpy() for batch in loader]))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_stream_disjoint_samples_covering_the_epoch(tmp_path, cub):
    # Small chunks, so that the two ranks have several to share out.
    location = stream.build_shards(cub, "train", SIDE, settings(tmp_path, "jpeg", chunk_bytes="64KB"))
    mp.spawn(_rank_indices, args=(2, _free_port(), location, str(tmp_path)), nprocs=2)
    first, second = (np.load(tmp_path / f"rank{r}.npy") for r in (0, 1))
    assert len(first) == len(second) > 0
    assert not set(first) & set(second)
    assert len(set(first) | set(second)) == len(first) + len(second)
    # Everything but what drop_last leaves over (less than a batch per rank) is seen.
    assert len(cub.samples) - (len(first) + len(second)) < 2 * 10


class Crash(Exception):
    pass


class Recorder(L.LightningModule):
    """Trains one weight and records, per epoch, the sample indices of every batch it trained on."""

    def __init__(self, crash_at_step: int | None = None) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.crash_at_step = crash_at_step
        self.seen: list[tuple[int, int]] = []

    def training_step(self, batch, batch_idx):
        if self.global_step == self.crash_at_step:
            raise Crash  # what survives is the last checkpoint
        self.seen += [(self.current_epoch, int(i)) for i in batch]
        return (self.weight * batch.float().mean()).sum()

    def configure_optimizers(self):
        assert self.trainer.estimated_stepping_batches  # as the LR schedules do: the loader exists before the restore
        return torch.optim.SGD(self.parameters(), lr=0.0)


BATCH = 16


def _fit(module, location, ckpt_dir, limit, workers, ckpt_path=None):
    data = stream.StreamDataModule(location, transform=None, global_batch_size=BATCH, num_workers=workers,
                                   collate_fn=None, seed=5, max_cache_size="1GB")
    trainer = L.Trainer(max_epochs=2, limit_train_batches=limit, accelerator="cpu", logger=False,
                        enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[LastCheckpoint(ckpt_dir / "last.ckpt", 1, every_n_train_steps=5)])
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)


@pytest.mark.parametrize(("chunk_bytes", "crash_after", "limit", "workers"),
                         [("64KB", 9, None, 0), ("64MB", 9, None, 0), ("64KB", 1, None, 0), ("64KB", 1, 12, 0),
                          ("64KB", 9, None, 2)])
def test_a_killed_run_resumes_the_epoch_where_its_checkpoint_left_it(monkeypatch, tmp_path, cub, chunk_bytes,
                                                                      crash_after, limit, workers):
    """crash_after: steps into epoch 2 (checkpoints after epoch 1 and at every 5th step). 9: two steps after the
    mid-epoch checkpoint of step 25; 1: one step after epoch 1's end, also where the trainer ends epochs before
    the loader does (limit_train_batches). Many chunks, or one; loader workers or none."""
    monkeypatch.setattr(stream, "StreamedViews", Indices)
    location = stream.build_shards(cub, "train", SIDE, settings(tmp_path, "jpeg", chunk_bytes=chunk_bytes))
    straight = Recorder()
    _fit(straight, location, tmp_path / "straight", limit, workers)
    steps_per_epoch = limit or len(cub.samples) // BATCH
    crash_at = steps_per_epoch + crash_after
    crashed = Recorder(crash_at_step=crash_at)
    with pytest.raises(Crash):
        _fit(crashed, location, tmp_path / "crashed", limit, workers)
    saved_step = torch.load(tmp_path / "crashed" / "last.ckpt", weights_only=False)["global_step"]
    assert steps_per_epoch <= saved_step < crash_at  # work was lost after the checkpoint
    resumed = Recorder()
    _fit(resumed, location, tmp_path / "crashed", limit, workers, ckpt_path=tmp_path / "crashed" / "last.ckpt")
    kept = crashed.seen[: saved_step * BATCH]  # what the checkpointed state had trained on
    second_epoch = [i for e, i in kept + resumed.seen if e == 1]
    assert len(second_epoch) == len(set(second_epoch))  # no sample twice
    assert kept + resumed.seen == straight.seen  # and the same samples, in the same order, as without the crash


@pytest.mark.parametrize("augment_on", ["workers", "device"])
def test_streamed_pretraining_batches_are_two_views_on_either_augmentation_path(compose_cfg, tmp_path, cub,
                                                                                  augment_on):
    from s3l.config import stage_specs

    cfg = compose_cfg("experiment=cub_112_mocov2", f"dataset.root={CUB_SUBSET}", "dataset.format=litdata",
                      "stage=pretrain", "resolution=32", "method.batch_size=8", f"dataset.augment_on={augment_on}",
                      f"dataset.stream.dir={tmp_path}", "dataset.num_workers=0")
    (spec,) = stage_specs(cfg)
    data = stream.stream_pretrain_datamodule(cfg, spec, cub)
    batch = data.on_after_batch_transfer(next(iter(data.train_dataloader())), 0)  # the device path augments here
    (query, key), labels = batch
    assert query.shape == key.shape == (8, 3, 32, 32) and query.dtype == torch.float32 and labels.shape == (8,)
    assert not torch.equal(query, key)
