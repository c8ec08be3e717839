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


def _global_nt_xent_on_rank(rank: int, world_size: int, port: int, z1_all, z2_all, results) -> None:
    from s3l.methods.losses import nt_xent

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        n = z1_all.shape[0] // world_size
        z1 = z1_all[rank * n:(rank + 1) * n].clone().requires_grad_(True)
        z2 = z2_all[rank * n:(rank + 1) * n].clone().requires_grad_(True)
        loss = nt_xent(z1, z2, 0.2, negatives="global")
        loss.backward()
        results.put((rank, loss.item(), z1.grad.tolist(), z2.grad.tolist()))  # plain lists: no shared memory
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_global_nt_xent_on_two_processes_equals_one_process_on_the_whole_batch_gradients_included():
    from s3l.methods.losses import nt_xent

    torch.manual_seed(0)
    z1_all, z2_all = torch.randn(6, 5), torch.randn(6, 5)
    # spawn, not fork: a forked child runs no backward pass if its parent (pytest) ever ran one (autograd's
    # threads do not survive a fork).
    results = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(_global_nt_xent_on_rank, args=(2, _free_port(), z1_all, z2_all, results), nprocs=2,
                       join=True, start_method="spawn")
    per_rank = sorted(results.get() for _ in range(2))
    single1, single2 = z1_all.clone().requires_grad_(True), z2_all.clone().requires_grad_(True)
    single = nt_xent(single1, single2, 0.2)
    single.backward()
    # DDP averages gradients over processes: the mean of the per-process losses and of their gradients
    assert sum(loss for _, loss, _, _ in per_rank) / 2 == pytest.approx(single.item(), rel=1e-5)
    grad1 = torch.tensor([row for _, _, g1, _ in per_rank for row in g1]) / 2
    grad2 = torch.tensor([row for _, _, _, g2 in per_rank for row in g2]) / 2
    torch.testing.assert_close(grad1, single1.grad, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(grad2, single2.grad, atol=1e-6, rtol=1e-4)
    # local negatives (the upstream's per-GPU loss) differ: each process sees only its own 3 images
    local = [nt_xent(z1_all[i:i + 3], z2_all[i:i + 3], 0.2, negatives="local").item() for i in (0, 3)]
    assert sum(local) / 2 != pytest.approx(single.item(), rel=1e-3)
