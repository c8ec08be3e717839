"""When `last.ckpt` is written: every N epochs, after N minutes of training (at an epoch's end), at the end; and
written in the background without losing what was saved."""

from types import SimpleNamespace

import torch

import s3l.callbacks.checkpointing as checkpointing
from s3l.callbacks.checkpointing import LastCheckpoint, checkpoint_io, wait_for_checkpoints


class FakeTrainer:
    """What LastCheckpoint reads from a Trainer, recording the epochs it saved at."""

    def __init__(self, max_epochs: int) -> None:
        self.max_epochs, self.current_epoch, self.global_step, self.saved = max_epochs, 0, 0, []

    def save_checkpoint(self, path, weights_only: bool) -> None:
        self.saved.append(self.current_epoch + 1)


def epochs_saved(callback: LastCheckpoint, max_epochs: int, clock: list[float], seconds_per_epoch: float) -> list:
    trainer = FakeTrainer(max_epochs)
    callback.on_train_start(trainer, None)
    for epoch in range(max_epochs):
        trainer.current_epoch = epoch
        clock[0] += seconds_per_epoch
        callback.on_train_epoch_end(trainer, None)
    return trainer.saved


def test_epochs_minutes_and_the_end_decide_the_saves(tmp_path, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(checkpointing.time, "monotonic", lambda: clock[0])
    path = tmp_path / "last.ckpt"
    assert epochs_saved(LastCheckpoint(path, 3, None), 10, clock, 5.0) == [3, 6, 9, 10]
    # 5 s epochs, every 0.5 min: the first epoch end at or after 30 s since the last write, and the last epoch
    assert epochs_saved(LastCheckpoint(path, None, None, every_n_minutes=0.5), 14, clock, 5.0) == [6, 12, 14]
    # 7 s epochs: 35 s after the start, then 35 s after that write
    assert epochs_saved(LastCheckpoint(path, None, None, every_n_minutes=0.5), 11, clock, 7.0) == [5, 10, 11]
    # nothing set: only the end of training
    assert epochs_saved(LastCheckpoint(path, None, None), 4, clock, 5.0) == [4]


def test_a_background_write_holds_the_state_at_the_save_not_later_changes(tmp_path):
    io = checkpoint_io(async_write=True)
    weights = torch.zeros(1000)
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"w": weights}, path)
    weights += 1  # training goes on while the file is written
    wait_for_checkpoints(SimpleNamespace(strategy=SimpleNamespace(checkpoint_io=io)))
    torch.testing.assert_close(torch.load(path, weights_only=True)["w"], torch.zeros(1000))
    io.save_checkpoint({"w": weights}, path)  # after a wait the writer starts again
    io.teardown()  # what Lightning calls at the end of fit: it returns at once, the write goes on
    wait_for_checkpoints(SimpleNamespace(strategy=SimpleNamespace(checkpoint_io=io)))
    torch.testing.assert_close(torch.load(path, weights_only=True)["w"], torch.ones(1000))
    assert checkpointing.previous_checkpoint(path).is_file()  # still the atomic writer underneath
