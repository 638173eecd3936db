"""The model-randomisation sanity check: rank correlation in closed form, the randomised copy, and a learnt map that
differs from its random model's."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from evaluate.ail.cam import attention_inside_lungs, saliency_maps
from evaluate.ail.sanity import SANITY_MAX_CORRELATION, randomised_copy, rank_correlation
from models.backbones import Classifier, build_backbone

SIZE = 32


def test_rank_correlation_closed_form() -> None:
    a = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert rank_correlation(a, a * 3 + 1, size=4).item() == 1.0
    assert rank_correlation(a, -a, size=4).item() == -1.0
    assert rank_correlation(a, torch.ones_like(a), size=4).item() == 0.0
    # ties share their mean rank: x = [0, 0, 1, 2] -> ranks [0.5, 0.5, 2, 3]; y = [0, 1, 2, 3] -> ranks [0, 1, 2, 3]
    x, y = torch.tensor([0.0, 0.0, 1.0, 2.0]).reshape(1, 1, 2, 2), torch.arange(4.0).reshape(1, 1, 2, 2)
    rx, ry = torch.tensor([0.5, 0.5, 2.0, 3.0]) - 1.5, torch.tensor([0.0, 1.0, 2.0, 3.0]) - 1.5
    expected = float((rx * ry).sum() / (rx.norm() * ry.norm()))
    assert abs(rank_correlation(x, y, size=2).item() - expected) < 1e-6


def test_randomised_copy_redraws_every_parameter_and_keeps_the_model() -> None:
    torch.manual_seed(0)
    model = Classifier(build_backbone("tiny", 1), 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.random.get_rng_state()
    first, second = randomised_copy(model, 7), randomised_copy(model, 7)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator is untouched
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name])
        assert torch.equal(first.state_dict()[name], second.state_dict()[name])  # seeded
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, dict(first.named_parameters())[n])]
    weights = [n for n, p in model.named_parameters() if "weight" in n and p.ndim > 1]
    assert set(weights) <= set(changed)


def _squares(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise images, half of them (class 1) with a bright 8 x 8 square at a random place, and the squares' masks:
    the square is the only evidence of class 1, as a finding is of its class."""
    labels = torch.randint(0, 2, (n,), generator=generator)
    masks = torch.zeros(n, 1, SIZE, SIZE)
    corners = torch.randint(0, SIZE - 8, (n, 2), generator=generator)
    for i in torch.nonzero(labels).flatten().tolist():
        row, col = corners[i].tolist()
        masks[i, 0, row:row + 8, col:col + 8] = 1.0
    return torch.rand(n, 1, SIZE, SIZE, generator=generator) * 0.3 + 0.7 * masks, labels, masks


def test_a_trained_models_maps_find_its_evidence_and_differ_from_its_randomised_copys() -> None:
    torch.manual_seed(0)
    draw = torch.Generator().manual_seed(0)
    model = Classifier(build_backbone("tiny", 1), 2)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(60):
        images, labels, _ = _squares(32, draw)
        loss = F.cross_entropy(model(images), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    images, labels, masks = _squares(128, draw)
    model.eval()
    assert (model(images).argmax(dim=1) == labels).float().mean() > 0.9  # it learnt the task
    images, masks = images[labels == 1], masks[labels == 1]  # the map of the class whose evidence is in the image
    ones = torch.ones(len(images), dtype=torch.long)
    layer = "backbone.body.stage2"  # 8 x 8 at 32 px
    trained = saliency_maps(model, images, ones, layer)
    random_maps = saliency_maps(randomised_copy(model, 1).eval(), images, ones, layer)
    share = masks.mean()  # what an evenly spread map would score
    assert attention_inside_lungs(trained, masks).mean() > 2 * share  # the map points at the square
    assert rank_correlation(trained, trained.clone()).mean() == 1.0
    assert rank_correlation(trained, random_maps).mean() < SANITY_MAX_CORRELATION
