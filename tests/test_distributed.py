import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from s3l.distributed import batch_shuffle, batch_unshuffle, concat_all_gather


def test_unshuffle_restores_the_batch_exactly():
    torch.manual_seed(0)
    x = torch.randn(64, 3)
    shuffled, idx_unshuffle = batch_shuffle(x)
    assert torch.equal(batch_unshuffle(shuffled, idx_unshuffle), x)


def test_shuffled_batch_is_a_non_identity_permutation():
    torch.manual_seed(0)
    x = torch.arange(64.0).unsqueeze(1)
    shuffled, _ = batch_shuffle(x)
    assert sorted(shuffled.squeeze(1).tolist()) == x.squeeze(1).tolist()
    assert not torch.equal(shuffled, x)


def test_gather_on_one_process_is_identity():
    x = torch.randn(5, 2)
    assert torch.equal(concat_all_gather(x), x)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _shuffle_round_trip_on_rank(rank: int, world_size: int, port: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(rank)  # different seeds: only rank 0's permutation may count
        x = torch.arange(8.0).unsqueeze(1) + 100 * rank  # rank 0: 0..7, rank 1: 100..107
        gathered = concat_all_gather(x)
        assert gathered.squeeze(1).tolist() == [*range(8), *range(100, 108)]

        shuffled, idx_unshuffle = batch_shuffle(x)
        everyone_shuffled = concat_all_gather(shuffled).squeeze(1).tolist()
        assert sorted(everyone_shuffled) == [*range(8), *range(100, 108)]  # one permutation shared by both
        assert everyone_shuffled != [*range(8), *range(100, 108)]
        assert torch.equal(batch_unshuffle(shuffled, idx_unshuffle), x)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_shuffle_round_trip_across_two_processes():
    # fork rather than spawn: the children inherit the imported torch instead of importing it again (seconds).
    mp.start_processes(
        _shuffle_round_trip_on_rank, args=(2, _free_port()), nprocs=2, join=True, start_method="fork"
    )
