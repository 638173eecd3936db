"""Per-sample conditions (finding vectors) of a synthetic data set.

Sample ``i`` of a split belongs to class ``i mod C`` (classes interleave, so
every block of a store holds every class). Its condition vector is a draw
from the empirical distribution of the class members' condition vectors
(``label_tasks.finding_distribution``: ``1[v == 1]`` with "No Finding"
cleared, over the label table given), except:

* setting ``Xs``, class "No Finding": the all-zero vector;
* setting ``0s`` with the device policy ``clear``: the non-finding columns
  (Support Devices) cleared, so "No Finding" is the all-zero vector and, for
  versions 1 and 3, a class finding its one-hot vector (version 2 "Finding":
  a single finding drawn with its real frequency). This is how every 0s store
  was drawn before stores recorded a policy.

The default 0s policy ``empirical`` keeps the non-finding columns: every
class, "No Finding" included, carries Support Devices at the rate among its
real members (about half of them on CheXpert frontal rows), as the real
images of that class do - the label policy ignores Support Devices, so they
are class members with or without devices. Setting ``Xs`` takes no policy:
its finding classes always draw full vectors (other findings and devices
included).

The draw for sample ``i`` uses ``u_i = uniform(seed, "condition", split, i)``
(:func:`plumbing.seeding.uniform`, ``derive_seed(...) / 2^63``)
and inverse-CDF sampling, so it depends only on (seed, split, i): never on
the batch size or on where a resumed run starts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datasets.findings import NO_FINDING, FindingSchema
from datasets.label_tables import read_chexpert_table, read_nih_table
from datasets.label_tasks import LabelTask, finding_distribution
from plumbing.seeding import uniform

DEVICE_POLICIES: tuple[str, ...] = ("empirical", "clear")
"""How setting 0s draws the non-finding columns (module docstring)."""


def condition_vectors(schema_name: str, csv: Path | None = None) -> np.ndarray:
    """The real finding vectors conditions are drawn from: ``csv``, else torchxrayvision's bundled label file."""
    if schema_name == "chexpert":
        return read_chexpert_table(csv).vectors
    return read_nih_table(csv).vectors


class ConditionSampler:
    """Draws the class and condition vector of every sample of a split.

    Args:
        task: the label task (version and setting).
        schema: finding schema of the generator's conditions.
        vectors: ``[N, K]`` real finding vectors (the label table the
            empirical distributions come from).
        devices: the 0s device policy, one of :data:`DEVICE_POLICIES`;
            ``None`` for setting ``Xs``, which takes none.
    """

    def __init__(
        self, task: LabelTask, schema: FindingSchema, vectors: np.ndarray, *, devices: str | None
    ) -> None:
        allowed = (None,) if task.setting == "Xs" else DEVICE_POLICIES
        if devices not in allowed:
            raise ValueError(f"setting {task.setting} takes the device policy {' or '.join(map(str, allowed))}, "
                             f"got {devices!r}")
        self.task = task
        self.schema = schema
        self.devices = devices
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
            if (name == NO_FINDING and self.task.setting == "Xs") or not rows.any():
                continue
            unique, probs = self.distribution[name]
            cdf = np.cumsum(probs)
            pick = np.minimum(np.searchsorted(cdf, u[rows] * cdf[-1], side="right"), len(cdf) - 1)
            out[rows] = unique[pick]
        if self.devices == "clear":
            out[:, self._non_findings] = 0.0
        return out
