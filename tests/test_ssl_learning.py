"""Learning happens: a few dozen pretext steps on phantoms at 32 px lower the loss and raise the monitor's k-NN
balanced accuracy above that of the random initialisation they start from; a supervised step is the monitor's
positive control (it must see learning where learning happens)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from evaluate.protocol.task_data import DataChoice, labels_of, training_sets
from models.backbones import Classifier, build_backbone
from plumbing.runtime import Runtime
from ssl.config import StepConfig
from ssl.data import parse_data, unlabelled_images
from ssl.monitor import Monitor, MonitorConfig
from ssl.trainer import PretextData, StepState, fit_step

SIZE, IMAGES, BATCH = 32, 256, 32
CPU = Runtime(torch.device("cpu"), False, 0, False, Path("runs"))
STEPS = 100
"""Supervised steps of the monitor's positive control."""
LEARNING = {  # task: (learning rate, epochs of IMAGES / BATCH steps)
    "moco": (0.1, 8),
    "odc": (0.03, 8),
    "relloc": (0.1, 6),
    "rotation": (0.1, 8),
    "swav": (0.1, 8),
}
BLIND = {
    "rotation": "rotation is solved from the radiograph's orientation alone (loss 0.97 to 0.01 in 64 steps) and its "
                "features do not carry the phantom findings: k-NN 0.32 at the start, 0.25-0.31 after every epoch; "
                "crops of 8-30 % or 50-100 % of the image and lr 0.01-0.1 did not change that",
}


@pytest.fixture(scope="module")
def monitor() -> Monitor:
    return Monitor(MonitorConfig("phantom", None, 3, "0s", 400), SIZE)


def _step(task: str, lr: float, epochs: int) -> StepConfig:
    return StepConfig(task=task, settings={}, data=("phantom",), max_images=IMAGES, backbone="tiny", image_size=SIZE,
                      epochs=epochs, batch_size=BATCH, lr=lr, lr_grid=(lr,), lr_trial_epochs=1, weight_decay=1e-4,
                      momentum=0.9, seed=0, start="scratch", bf16=False, processes=1, store_workers=None, monitor={})


@pytest.fixture(scope="module")
def trained(monitor: Monitor) -> Callable[[str], StepState]:
    """The state of each task's short step, trained once for both tests below."""
    images, channels = unlabelled_images(parse_data("phantom"), SIZE, IMAGES, 0)

    @functools.cache
    def state(task: str) -> StepState:
        lr, epochs = LEARNING[task]
        return fit_step(_step(task, lr, epochs), PretextData(images, channels, monitor=monitor), CPU, lr, epochs).state

    return state


@pytest.mark.parametrize("task", sorted(LEARNING))
def test_a_short_pretext_step_lowers_its_loss(task: str, trained: Callable[[str], StepState]) -> None:
    state = trained(task)
    assert state.epoch_losses[-1] < 0.9 * state.epoch_losses[0]


@pytest.mark.parametrize("task", [  # strict: a change that makes Rotation's features carry the findings is seen
    pytest.param(t, marks=pytest.mark.xfail(reason=BLIND[t], strict=True)) if t in BLIND else t
    for t in sorted(LEARNING)
])
def test_a_short_pretext_step_raises_the_knn_above_its_start(task: str, trained: Callable[[str], StepState]) -> None:
    state = trained(task)
    assert state.knn_start is not None and state.epoch_knn[-1] > state.knn_start + 0.02


def test_the_monitor_sees_a_supervised_backbone_learn(monitor: Monitor) -> None:
    """The positive control: STEPS supervised steps on the labelled phantoms (class-balanced batches) raise the k-NN
    far above the random start, so a pretext step whose k-NN stays put has learnt nothing the labels need."""
    train, _ = training_sets(DataChoice("phantom", None, 3, "0s", None), SIZE, 0)
    queries = set(monitor.queries.indices)  # the monitor's queries are not trained on (its bank may be)
    train = torch.utils.data.Subset(train, [i for i in range(len(train)) if i not in queries])
    labels = labels_of(train)
    weights = (1.0 / torch.bincount(labels).float())[labels]
    sampler = torch.utils.data.WeightedRandomSampler(weights, STEPS * BATCH, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = Classifier(build_backbone("tiny", 1), len(monitor.classes))
    start = monitor.knn(model.backbone, CPU, 64)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for batch in torch.utils.data.DataLoader(train, batch_size=BATCH, sampler=sampler):
        loss = F.cross_entropy(model(batch["image"]), batch["label"])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert monitor.knn(model.backbone, CPU, 64) > start + 0.1  # measured: 0.31 to 0.47
