"""Label-free model-selection scores: pure functions of a network's :class:`adapt.outputs.Outputs`.

Each evaluation of an adaptation run records these beside the source
validation accuracy and the information-maximisation score of
:mod:`adapt.selection` (which chooses among the evaluations with them):

* **SND**, soft neighbourhood density (Saito et al. 2021, "Tune it the right
  way"): :func:`soft_neighbourhood_density` of the target predictions;
  higher is better.
* **DEV**, deep embedded validation (You et al. 2019, "Towards accurate model
  selection in deep unsupervised domain adaptation"):
  :func:`deep_embedded_validation`, the source validation loss importance-
  weighted towards the target with a control variate; lower is better.
* **BNM**, batch nuclear-norm (Cui et al. 2020, "Towards discriminability and
  diversity"): :func:`batch_nuclear_norm` of the target predictions; higher
  is better.
* **target entropy**, the mean prediction entropy of the target predictions
  (:func:`adapt.selection.prediction_spread`); lower is better.

Musgrave et al. 2022 ("Benchmarking validation methods for unsupervised
domain adaptation") compare these validators by the gap between the
accuracy each one selects and the best one; ``python -m adapt.report``
prints that comparison over a grid of runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from plumbing.seeding import generator

from .outputs import Outputs

SND_TEMPERATURE = 0.05
"""The softmax temperature of SND over neighbour similarities (the paper's and pytorch-adapt's choice)."""
DEV_L2 = 1e-2
"""The L2 penalty ``lambda`` of DEV's logistic domain classifier on standardised features (bias unpenalised)."""
DEV_ITERATIONS = 100
"""The L-BFGS iterations (strong-Wolfe line search, float64, full batch) that fit DEV's domain classifier."""


def soft_neighbourhood_density(probabilities: torch.Tensor, temperature: float = SND_TEMPERATURE) -> float:
    """SND of ``N >= 2`` predictions ``p`` (``[N, C]``): the mean entropy of each image's soft neighbourhood.

    With ``u_i = p_i / ||p_i||_2`` and the cosine similarities ``s_ij = u_i . u_j``
    over the other images ``j != i`` (the diagonal removed, ``N - 1`` per row),
    ``a_ij = softmax_j(s_ij / T)`` and ``SND = (1/N) sum_i -sum_{j != i} a_ij log a_ij``.
    High when every image has many close neighbours (dense clusters); identical
    predictions give its maximum ``log(N - 1)``. ``[N, N]`` memory: fine for a
    few thousand images. ``ValueError`` for fewer than two images.
    """
    n = len(probabilities)
    if n < 2:
        raise ValueError(f"SND needs at least two predictions, got {n}")
    unit = F.normalize(probabilities.double(), dim=1)
    similarity = unit @ unit.T
    off_diagonal = similarity.masked_select(~torch.eye(n, dtype=torch.bool)).view(n, n - 1)
    attention = torch.softmax(off_diagonal / temperature, dim=1)
    return float(-torch.special.xlogy(attention, attention).sum(dim=1).mean())


def batch_nuclear_norm(probabilities: torch.Tensor) -> float:
    """BNM of ``N`` predictions ``P`` (``[N, C]``): ``||P||_* / N``, the sum of ``P``'s singular values over ``N``.

    Large when predictions are both confident and spread over the classes:
    ``N`` one-hot rows spread evenly over ``C`` classes give ``sqrt(C / N)``;
    ``N`` identical rows ``p`` (rank 1) give ``||p||_2 / sqrt(N)`` (uniform rows:
    ``1 / sqrt(N C)``). ``ValueError`` for no predictions.
    """
    if len(probabilities) == 0:
        raise ValueError("BNM needs at least one prediction")
    return float(torch.linalg.svdvals(probabilities.double()).sum() / len(probabilities))


def logistic_regression(
    features: torch.Tensor, labels: torch.Tensor, l2: float = DEV_L2, iterations: int = DEV_ITERATIONS
) -> tuple[torch.Tensor, torch.Tensor]:
    """The weights ``w`` (``[D]``) and bias ``b`` (``[]``) of an L2-regularised logistic regression, float64.

    Minimises ``(1/N) sum_i BCE(x_i . w + b, y_i) + (l2 / 2) ||w||^2`` over
    ``features`` ``x`` (``[N, D]``) and 0/1 ``labels`` ``y`` (``[N]``) with
    L-BFGS from zero (deterministic for given inputs); at the optimum the
    gradient ``(1/N) sum_i (sigmoid(x_i . w + b) - y_i) [x_i, 1] + l2 [w, 0]``
    is zero. Callers standardise the features first.
    """
    x, y = features.double(), labels.double()
    weights = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([weights, bias], max_iter=iterations, tolerance_grad=1e-10,
                                  tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        optimiser.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ weights + bias, y) + 0.5 * l2 * weights.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(objective)
    return weights.detach(), bias.detach()


def density_ratios(source_train: torch.Tensor, target_train: torch.Tensor, source_scored: torch.Tensor,
                   l2: float = DEV_L2) -> torch.Tensor:
    """DEV's importance weights ``w(x) = (n_s / n_t) p(target | x) / p(source | x)`` of ``source_scored`` (``[M]``).

    A logistic domain classifier (:func:`logistic_regression`, target = 1) is
    fitted on the ``n_s`` rows of ``source_train`` against the ``n_t`` rows of
    ``target_train`` (``[n, D]`` features, standardised by the mean and
    standard deviation of the training rows, a constant feature left at 0);
    ``p(target | x) / p(source | x) = exp(x . w + b)`` is its odds and
    ``n_s / n_t`` removes the training prior, so features the classifier cannot
    tell apart get ``w = 1``, and source images that look like target images
    get ``w > 1``.
    """
    train = torch.cat([source_train, target_train]).double()
    mean, std = train.mean(dim=0), train.std(dim=0, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    labels = torch.cat([torch.zeros(len(source_train)), torch.ones(len(target_train))])
    weights, bias = logistic_regression((train - mean) / std, labels, l2)
    odds = torch.exp((source_scored.double() - mean) / std @ weights + bias)
    return odds * len(source_train) / len(target_train)


def dev_risk(weights: torch.Tensor, losses: torch.Tensor) -> float:
    """DEV's control-variate risk of per-image validation ``losses`` ``l`` under importance ``weights`` ``w``.

    With the weighted losses ``wl_i = w_i l_i``, ``eta = -Cov(wl, w) / Var(w)``
    (sample covariance and variance) and
    ``risk = mean(wl) + eta mean(w) - eta``: an unbiased estimate of the target
    risk with a lower variance than ``mean(wl)`` (the control variate ``w`` has
    expectation 1). Equal weights (``Var(w) <= 1e-12``) take ``eta = 0``, so
    ``w = 1`` gives the mean loss. Needs at least two images.
    """
    w, wl = weights.double(), weights.double() * losses.double()
    variance = float(w.var())
    if variance <= 1e-12:
        return float(wl.mean())
    covariance = float(((wl - wl.mean()) * (w - w.mean())).sum() / (len(w) - 1))
    eta = -covariance / variance
    return float(wl.mean() + eta * w.mean() - eta)


def deep_embedded_validation(validation: Outputs, target: Outputs, seed: int, l2: float = DEV_L2) -> float:
    """DEV risk (lower is better) of a network from its outputs on the labelled source validation images and on
    target images; ``nan`` with fewer than two images in either.

    Each set is split into two halves by a permutation seeded by ``seed``
    (the same halves at every evaluation of a run). Two-fold cross-fitting:
    the domain classifier of :func:`density_ratios`, fitted on the features of
    one source half against one target half, weighs the images of the other
    source half, so every source validation image is weighed by a classifier
    that never saw it. ``l`` is each image's cross-entropy of the network's
    logits on its label and the risk is :func:`dev_risk` of all the weights and
    losses. You et al. fit a small MLP on the source training features; a
    logistic regression on the validation features is cheaper and
    deterministic. ``ValueError`` for an unlabelled validation image.
    """
    if not validation.labelled:
        raise ValueError("DEV needs a label on every source validation image")
    if len(validation.labels) < 2 or len(target.labels) < 2:
        return math.nan
    source_halves = _halves(len(validation.labels), seed, "dev-source")
    target_halves = _halves(len(target.labels), seed, "dev-target")
    losses = F.cross_entropy(validation.logits.double(), validation.labels, reduction="none")
    weights = torch.empty(len(validation.labels), dtype=torch.float64)
    for fit, scored in ((0, 1), (1, 0)):
        weights[source_halves[scored]] = density_ratios(
            validation.features[source_halves[fit]], target.features[target_halves[fit]],
            validation.features[source_halves[scored]], l2)
    return dev_risk(weights, losses)


def _halves(n: int, seed: int, key: str) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.randperm(n, generator=generator(seed, key))
    return order[: n // 2], order[n // 2:]


def validator_scores(validation: Outputs, target: Outputs, seed: int) -> dict[str, float | None]:
    """``{"snd": ..., "dev_risk": ..., "bnm": ...}`` of the evaluation network's outputs on the source validation
    images and on the target selection images (module docstring; the target entropy comes from
    :func:`adapt.selection.prediction_spread`); ``None`` where a score is undefined (too few images) or not
    finite, so the results stay plain JSON."""
    probabilities = target.probabilities
    scores = {
        "snd": soft_neighbourhood_density(probabilities) if len(probabilities) >= 2 else math.nan,
        "dev_risk": deep_embedded_validation(validation, target, seed),
        "bnm": batch_nuclear_norm(probabilities) if len(probabilities) else math.nan,
    }
    return {name: value if math.isfinite(value) else None for name, value in scores.items()}
