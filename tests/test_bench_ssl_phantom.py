"""bench.ssl_phantom's reading of the runs: the best single tasks, the monitor's k-NN rise per task, the claims."""

from __future__ import annotations

from typing import Any

from bench.ssl_phantom import best_singles, claims, knn_rises


def _run(tasks: list[str], seed: int, finetune: float, knn: tuple[float, float] | None = None) -> dict[str, Any]:
    steps = [] if knn is None else [{"knn_start": knn[0], "epoch_knn": [0.0, knn[1]]}]
    return {"tasks": tasks, "seed": seed, "steps": steps, "downstream": {"balanced_accuracy": finetune}}


def test_the_best_single_tasks_by_their_mean_figure() -> None:
    runs = [_run(["a"], 0, 0.5), _run(["a"], 1, 0.7), _run(["b"], 0, 0.65), _run(["c"], 0, 0.4),
            _run(["d"], 0, 0.65), _run(["a", "b"], 0, 0.9), _run([], 0, 0.8)]
    assert best_singles(runs, ["a", "b", "c", "d", "e"], "finetune") == ["b", "d", "a"]  # ties by name; e has none


def test_knn_rises_per_task_in_seed_order() -> None:
    runs = [_run(["a"], 1, 0.5, (0.3, 0.4)), _run(["a"], 0, 0.5, (0.3, 0.25)), _run(["a", "b"], 0, 0.5, (0.1, 0.9)),
            _run(["b"], 0, 0.5)]
    rises = knn_rises(runs)
    assert list(rises) == ["a"] and [round(r, 6) for r in rises["a"]] == [-0.05, 0.1]


def _row(ordering: str, label: str, value: float, ail: float | None) -> dict[str, Any]:
    return {"ordering": ordering, "label": label, "balanced_accuracy": value, "knn": None, "linear": None, "ail": ail}


def test_claims_compare_curricula_with_singles_orderings_and_scratch() -> None:
    rows = [_row("none", "-", 0.5, 0.30), _row("a", "-", 0.6, 0.20), _row("b", "-", 0.7, 0.40),
            _row("a>b", "C", 0.75, 0.25), _row("b>a", "AC", 0.65, 0.35)]
    said = claims(rows, "finetune")
    assert said[0] == "Best curriculum a>b (C, 0.750) beats the best single task b (0.700)."
    assert said[1] == ("The Curriculum ordering beats the Anti-Curriculum ordering of the same two tasks in 1 of 1 "
                       "pairs.")
    assert said[2] == "AIL: scratch 0.300; SSL-pretrained 0.300 on average, higher than scratch for 2 of 4 orderings."
