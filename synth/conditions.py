"""Per-sample conditions (finding vectors) of a synthetic data set.

Sample ``i`` of a split belongs to class ``i mod C`` (classes interleave, so
every block of a store holds every class). Its condition vector is:

* class "No Finding": the all-zero vector;
* setting ``0s``: a draw from the empirical distribution of the class's
  isolated-finding vectors (``label_tasks.finding_distribution`` of the 0s
  task) with the non-finding columns (Support Devices) cleared - for versions
  1 and 3 that is exactly the class finding's one-hot vector, for version 2
  "Finding" a single finding drawn with its real frequency;
* setting ``Xs``: a draw from the real empirical distribution of the class's
  full condition vectors (other findings and Support Devices included).

The draw for sample ``i`` uses ``u_i = uniform(seed, "condition", split, i)``
(:func:`plumbing.seeding.uniform`, ``derive_seed(...) / 2^63``)
and inverse-CDF sampling, so it depends only on (seed, split, i): never on
the batch size or on where a resumed run starts.
"""

from __future__ import annotations

import numpy as np

from datasets.findings import NO_FINDING, FindingSchema
from datasets.label_tasks import LabelTask, finding_distribution
from plumbing.seeding import uniform


class ConditionSampler:
    """Draws the class and condition vector of every sample of a split.

    Args:
        task: the label task (version and setting).
        schema: finding schema of the generator's conditions.
        vectors: ``[N, K]`` real finding vectors (the label table the
            empirical distributions come from).
    """

    def __init__(self, task: LabelTask, schema: FindingSchema, vectors: np.ndarray) -> None:
        self.task = task
        self.schema = schema
        self.distribution = finding_distribution(vectors, schema, task)
        self._non_findings = schema.indices(schema.non_findings)

    @property
    def num_classes(self) -> int:
        return len(self.task.classes)

    def labels(self, indices: np.ndarray) -> np.ndarray:
        """Class of each sample index (``i mod C``)."""
        return (np.asarray(indices) % self.num_classes).astype(np.int64)

    def conditions(self, seed: int, split: str, indices: np.ndarray) -> np.ndarray:
        """``[len(indices), K]`` float32 condition vectors of the given samples."""
        indices = np.asarray(indices)
        labels = self.labels(indices)
        out = np.zeros((len(indices), len(self.schema.columns)), dtype=np.float32)
        u = np.array([uniform(seed, "condition", split, int(i)) for i in indices])
        for c, name in enumerate(self.task.classes):
            rows = labels == c
            if name == NO_FINDING or not rows.any():
                continue
            unique, probs = self.distribution[name]
            cdf = np.cumsum(probs)
            pick = np.minimum(np.searchsorted(cdf, u[rows] * cdf[-1], side="right"), len(cdf) - 1)
            out[rows] = unique[pick]
        if self.task.setting == "0s":
            out[:, self._non_findings] = 0.0
        return out
