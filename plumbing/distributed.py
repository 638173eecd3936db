"""One process or several (``torchrun``), the same way for every trainer, through ``ignite.distributed``.

A trainer's command runs its whole ``main`` in every process ``torchrun``
starts (``torchrun --standalone --nproc_per_node N -m synth.train ...``, or
``--nnodes M`` with a rendezvous for several machines) and wraps the work in
:func:`distributed`:

* without ``torchrun`` (no ``WORLD_SIZE`` in the environment) nothing is
  initialised: one process, rank 0 of 1;
* under ``torchrun`` the process group is initialised from the environment
  (``env://``): NCCL when the device is a GPU (each process takes the GPU of
  its local rank, :func:`process_device`), gloo on CPUs.

Conventions every trainer follows (the shared handlers of
:mod:`plumbing.training` apply them):

* ``--batch-size`` is the *global* batch; each rank takes its contiguous
  share of every global batch (:func:`local_batch_size`,
  :class:`plumbing.sampling.ResumableBatchSampler` with ``rank`` /
  ``world_size``), so a run sees the same images in the same order with any
  number of processes, and a resume may use another number of processes;
* gradients are averaged over ranks (:func:`average_gradients` or DDP), so a
  step on ``N`` ranks equals a step on the whole batch wherever the loss is a
  mean over samples;
* only rank 0 (:func:`is_main_process`) writes: run folders, checkpoints,
  results, sample grids, exports, TensorBoard and the progress bar;
* evaluation shards are exact (:func:`shard`): no padding duplicates, so
  metrics reduced over ranks count every sample once.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import ignite.distributed as idist
import torch
from torch import nn

from .errors import UserError

T = TypeVar("T")


def under_launcher() -> bool:
    """Whether this process was started by ``torchrun`` (or another ``env://`` launcher)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def backend_for(device: torch.device) -> str | None:
    """``None`` (one process) without a launcher, else ``nccl`` for GPUs and ``gloo`` otherwise."""
    if not under_launcher():
        return None
    return "nccl" if device.type == "cuda" else "gloo"


@contextlib.contextmanager
def distributed(device: torch.device) -> Iterator[None]:
    """Initialise the process group for ``device`` when started by ``torchrun``, and finalise it on exit.

    After a normal exit the processes wait for each other first, so none
    closes its connections while another still uses them.
    """
    backend = backend_for(device)
    if backend is None:
        yield
        return
    idist.initialize(backend)
    try:
        yield
        idist.barrier()
    finally:
        idist.finalize()


def on_every_process(device: torch.device, body: Callable[[torch.device], T]) -> T:
    """``body(the device of this process)`` inside :func:`distributed`: a command's work, in each of its processes.

    ``device`` is the ``--device`` asked for; ``body`` gets :func:`process_device` of it (under a launcher, a
    GPU's index is the local rank). Returns what ``body`` returns; its exceptions pass through.
    """
    with distributed(device):
        return body(process_device(device))


def process_device(device: torch.device) -> torch.device:
    """The device of this process: a GPU's index comes from the local rank under a launcher."""
    if device.type == "cuda" and under_launcher():
        index = idist.get_local_rank()
        if index >= torch.cuda.device_count():
            raise UserError(
                f"local rank {index} has no GPU: this machine has {torch.cuda.device_count()}; "
                "start at most that many processes per node"
            )
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return device


def rank() -> int:
    return idist.get_rank()


def world_size() -> int:
    return idist.get_world_size()


def is_main_process() -> bool:
    """Rank 0: the one process that writes files and shows progress."""
    return idist.get_rank() == 0


def print_on_main(message: str) -> None:
    """Print ``message`` as one line on stderr from the main process (:func:`is_main_process`); the others are silent.

    The one way commands and trainers tell the user what they do, so that ``N`` processes print a line once.
    """
    if is_main_process():
        print(message, file=sys.stderr)


def processes() -> str:
    """``"x N processes "`` for messages under several processes, else ``""``."""
    world = idist.get_world_size()
    return f"x {world} processes " if world > 1 else ""


def local_batch_size(global_batch: int) -> int:
    """This rank's share of a global batch; the global batch must divide evenly."""
    world = idist.get_world_size()
    if global_batch % world:
        raise UserError(f"--batch-size {global_batch} must be a multiple of the number of processes ({world})")
    return global_batch // world


def shard(length: int) -> range:
    """The indices of ``range(length)`` this rank evaluates: every ``world``-th from ``rank`` (no duplicates)."""
    return range(idist.get_rank(), length, idist.get_world_size())


def data_parallel(model: nn.Module, device: torch.device, *, sync_bn: bool) -> nn.Module:
    """``model`` in DDP under several processes (its batch norm synchronised when ``sync_bn``), else ``model``.

    Unlike ``idist.auto_model`` it keeps ``device``: ``--device cpu`` on a GPU
    machine stays on the CPU, and one process never becomes DataParallel.
    The batch-norm layers are replaced inside ``model`` itself, so ``model``
    stays the module to checkpoint and evaluate.
    """
    if idist.get_world_size() == 1:
        return model
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def average_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """Replace each gradient by its mean over ranks (one flat all-reduce; nothing to do in one process).

    Parameters without a gradient in this step (``grad is None``: unused by
    the step's graph, such as the blocks of a GAN above its current
    resolution) keep none, as in one process, so an optimiser skips them
    there too. The graph must be the same on every rank (it is a function of
    the iteration), so every rank joins the same collective.
    """
    if idist.get_world_size() == 1:
        return
    grads = [p.grad for p in parameters if p.requires_grad and p.grad is not None]
    if not grads:
        return
    flat = idist.all_reduce(torch.cat([g.reshape(-1) for g in grads])) / idist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view(g.shape))
        offset += g.numel()


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over ranks (itself in one process)."""
    world = idist.get_world_size()
    if world == 1:
        return value
    return idist.all_reduce(value.clone()) / world


def mean_values_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each value averaged over ranks in one all-reduce (the same dict in one process)."""
    if idist.get_world_size() == 1:
        return values
    means = mean_over_ranks(torch.tensor(list(values.values()), dtype=torch.float64))
    return dict(zip(values, means.tolist(), strict=True))


def broadcast_module(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers into every rank's ``module`` (nothing to do in one process)."""
    if idist.get_world_size() == 1:
        return
    with torch.no_grad():
        for tensor in module.state_dict().values():
            tensor.copy_(idist.broadcast(tensor.clone(), src=0))


def sum_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The sum of a tensor over ranks (itself in one process)."""
    if idist.get_world_size() == 1:
        return value
    return idist.all_reduce(value.clone())


def gather_shards(local: torch.Tensor, length: int) -> torch.Tensor:
    """Every rank's :func:`shard` rows of a data set of ``length`` items, put back in data-set order.

    ``local`` holds this rank's rows (``shard(length)``, every ``world``-th
    item from ``rank``); each rank pads its rows to ``ceil(length / world)``,
    the padded blocks are all-gathered and interleaved, and the padding is
    dropped. Every rank returns the same ``[length, ...]`` tensor (``local``
    itself in one process).
    """
    world = idist.get_world_size()
    if world == 1:
        return local
    rows = -(-length // world)
    padded = local.new_zeros((rows, *local.shape[1:]))
    padded[: len(local)] = local
    gathered = idist.all_gather(padded.unsqueeze(0))  # [world, rows, ...]
    return gathered.transpose(0, 1).reshape(rows * world, *local.shape[1:])[:length]


def gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """The rows of every rank concatenated in rank order (ranks may hold different numbers of rows)."""
    world = idist.get_world_size()
    if world == 1:
        return rows
    counts = idist.all_gather(torch.tensor([rows.shape[0]], device=rows.device)).tolist()
    padded = rows.new_zeros((max(counts), *rows.shape[1:]))
    padded[: rows.shape[0]] = rows
    gathered = idist.all_gather(padded).view(world, max(counts), *rows.shape[1:])
    return torch.cat([gathered[r, :count] for r, count in enumerate(counts)])
