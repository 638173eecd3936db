"""The pretext tasks' losses and the Sinkhorn-Knopp assignment, as pure functions of tensors.

Every function takes this process's rows; where a quantity is global over
the processes (SwAV's Sinkhorn normalisation) the caller passes the
reduction to use, so the functions stay pure and testable in one process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F


def position_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Rotation and Relative Location: ``L = -1/N sum_n log softmax(z_n)[y_n]`` over the ``N`` views.

    ``y_n`` is the view's rotation (0-3) or patch position (0-7), known by
    construction; the loss is computed in float32.
    """
    return F.cross_entropy(logits.float(), labels)


def info_nce(query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo's contrastive loss of L2-normalised queries ``q`` ``[N, D]``, keys ``k`` ``[N, D]`` and a queue ``[K, D]``.

    ``l_n = [q_n . k_n, q_n . u_1, ..., q_n . u_K] / tau`` and
    ``L = -1/N sum_n log softmax(l_n)[0]``: the positive is the other view
    of the same image, the negatives are the queued keys of earlier batches.
    """
    q = query.float()
    positive = (q * key.float()).sum(dim=1, keepdim=True)
    negative = q @ queue.float().t()
    logits = torch.cat([positive, negative], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def _identity(value: torch.Tensor) -> torch.Tensor:
    return value


@torch.no_grad()
def sinkhorn(
    scores: torch.Tensor, epsilon: float, iterations: int,
    sum_over_processes: Callable[[torch.Tensor], torch.Tensor] = _identity,
) -> torch.Tensor:
    """SwAV's equipartitioned soft assignment of ``N`` rows of prototype scores ``[N, K]``.

    ``Q = exp(scores / epsilon)^T`` ``[K, B]`` (``B`` the global batch, its
    columns spread over the processes), scaled to sum 1; then ``iterations``
    times: every prototype row to sum ``1/K``, every sample column to sum
    ``1/B``. Returns ``B Q^T`` (this process's rows): each row sums to 1 and
    each prototype receives ``B/K`` of the global mass. ``sum_over_processes``
    sums a tensor over the processes (the identity in one process). The
    scores are cosine similarities (``|s| <= 1``), so ``exp(s / epsilon)``
    stays finite in float32 without a shift (``e^20`` at ``epsilon`` 0.05).
    """
    q = torch.exp(scores.float() / epsilon).t()
    total_batch = sum_over_processes(torch.tensor(float(q.shape[1]), device=q.device))
    q = q / sum_over_processes(q.sum())
    k = q.shape[0]
    for _ in range(iterations):
        q = q / sum_over_processes(q.sum(dim=1, keepdim=True)) / k
        q = q / q.sum(dim=0, keepdim=True) / total_batch
    return (q * total_batch).t()


def swav_loss(
    scores: Sequence[torch.Tensor], assignments: Sequence[torch.Tensor], temperature: float
) -> torch.Tensor:
    """Swapped prediction over the crops: ``scores[v]`` ``[N, K]``, ``assignments[i]`` ``[N, K]`` for crop ``i``.

    ``p_v = softmax(scores[v] / tau)``;
    ``L = 1/|A| sum_{i in A} 1/(V - 1) sum_{v != i} -1/N sum_n sum_k q_i[n, k] log p_v[n, k]``,
    ``A`` the crops with an assignment (the first ``len(assignments)``,
    the large crops), ``V`` all crops.
    """
    log_p = [F.log_softmax(s.float() / temperature, dim=1) for s in scores]
    total = scores[0].new_zeros((), dtype=torch.float32)
    for i, q in enumerate(assignments):
        others = [-(q * log_p[v]).sum(dim=1).mean() for v in range(len(scores)) if v != i]
        total = total + torch.stack(others).mean()
    return total / len(assignments)


def cluster_weights(sizes: torch.Tensor, power: float) -> torch.Tensor:
    """ODC's class weights ``w_c = (1 / max(n_c, 1))^power`` for cluster sizes ``n_c`` (``power`` 0.5)."""
    return sizes.float().clamp(min=1.0).reciprocal() ** power


def odc_loss(logits: torch.Tensor, labels: torch.Tensor, sizes: torch.Tensor, power: float) -> torch.Tensor:
    """ODC's re-weighted cluster classification: ``L = sum_n w_{y_n} CE(z_n, y_n) / sum_n w_{y_n}``.

    ``y_n`` the image's cluster label, ``w_c`` :func:`cluster_weights` of the
    current cluster sizes, so that large clusters do not dominate.
    """
    return F.cross_entropy(logits.float(), labels, weight=cluster_weights(sizes, power).to(logits.device))
