"""plumbing.distributed: gradient averaging, exact shards and global-batch parts across 2 gloo processes."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import ignite.distributed as idist
import pytest
import torch
from torch import nn

from plumbing.distributed import average_gradients, gather_shards, local_batch_size, mean_values_over_ranks, shard
from plumbing.errors import UserError
from plumbing.sampling import ResumableBatchSampler


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 5, generator=g), torch.randint(0, 3, (8,), generator=g)


def _gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    unused = nn.Parameter(torch.ones(3))  # not in this step's graph: keeps no gradient, as in one process
    average_gradients([*model.parameters(), unused])
    assert unused.grad is None
    return [p.grad.clone() for p in model.parameters()]


def _worker(local_rank: int, out: str) -> None:
    rank, world = idist.get_rank(), idist.get_world_size()
    x, y = _data()
    part = slice(rank * 4, (rank + 1) * 4)
    grads = _gradients(_model(), x[part], y[part])
    sampler = ResumableBatchSampler(10, 4, seed=3, start=2, rank=rank, world_size=world)
    record = {
        "grads": [g.tolist() for g in grads],
        "batches": list(itertools.islice(iter(sampler), 3)),
        "shard": list(shard(7)),
        "means": mean_values_over_ranks({"a": float(rank), "b": 2.0}),
        "gathered": gather_shards(torch.tensor([[float(i), -float(i)] for i in shard(7)]), 7).tolist(),
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(record))


def test_two_processes_average_gradients_and_split_batches_exactly(tmp_path: Path) -> None:
    with idist.Parallel(backend="gloo", nproc_per_node=2) as parallel:
        parallel.run(_worker, str(tmp_path))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    x, y = _data()
    whole = _gradients(_model(), x, y)  # one process, the whole batch
    for record in ranks:
        for got, want in zip(record["grads"], whole, strict=True):
            torch.testing.assert_close(torch.tensor(got), want, rtol=1e-6, atol=1e-7)
        assert record["means"] == {"a": 0.5, "b": 2.0}
        assert record["gathered"] == [[float(i), -float(i)] for i in range(7)]  # data-set order on every rank
    single = list(itertools.islice(iter(ResumableBatchSampler(10, 4, seed=3, start=2)), 3))
    assert [a + b for a, b in zip(ranks[0]["batches"], ranks[1]["batches"], strict=True)] == single
    assert ranks[0]["shard"] == [0, 2, 4, 6] and ranks[1]["shard"] == [1, 3, 5]


def test_one_process_is_rank_zero_of_one() -> None:
    assert list(shard(3)) == [0, 1, 2] and local_batch_size(6) == 6
    assert mean_values_over_ranks({"a": 1.0}) == {"a": 1.0}


def test_sampler_refuses_a_batch_the_ranks_cannot_share() -> None:
    with pytest.raises(ValueError):
        ResumableBatchSampler(10, 5, seed=0, rank=0, world_size=2)
    with pytest.raises(ValueError):
        ResumableBatchSampler(10, 4, seed=0, rank=2, world_size=2)


def test_local_batch_size_is_one_line_for_an_uneven_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(idist, "get_world_size", lambda: 4)
    with pytest.raises(UserError, match="multiple of the number of processes"):
        local_batch_size(6)
