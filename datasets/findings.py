"""Finding schemas: the label columns of CheXpert and ChestX-ray8/14.

A *finding vector* is a float32 array over a schema's ``columns`` holding the
raw label values: ``1`` positive, ``0`` negative, ``-1`` uncertain and ``nan``
blank (not mentioned). NIH labels are never uncertain nor blank: a finding is
1 when it appears in "Finding Labels" and 0 otherwise. Both schemas carry a
"No Finding" column so the label-task policy reads them the same way.

The *condition vector* given to the generator (``synth``) is the binary
positive vector ``1[v == 1]`` with the "No Finding" column cleared, so an image
without findings is conditioned on the all-zero vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NO_FINDING = "No Finding"


@dataclass(frozen=True)
class FindingSchema:
    """The label columns of one family of data sets.

    Attributes:
        name: short name (``chexpert`` or ``nih``).
        columns: label column names, in the order finding vectors use.
        non_findings: columns that never count as a finding ("No Finding",
            and for CheXpert "Support Devices").
    """

    name: str
    columns: tuple[str, ...]
    non_findings: tuple[str, ...]

    @property
    def findings(self) -> tuple[str, ...]:
        """The columns that count as findings."""
        return tuple(c for c in self.columns if c not in self.non_findings)

    def index(self, column: str) -> int:
        return self.columns.index(column)

    def indices(self, columns: tuple[str, ...] | list[str]) -> np.ndarray:
        return np.array([self.columns.index(c) for c in columns], dtype=np.int64)

    @property
    def finding_indices(self) -> np.ndarray:
        return self.indices(self.findings)

    def condition(self, vectors: np.ndarray) -> np.ndarray:
        """Binary condition vectors ``1[v == 1]`` with "No Finding" cleared ([N, K] float32)."""
        cond = (np.asarray(vectors) == 1).astype(np.float32)
        cond[..., self.index(NO_FINDING)] = 0.0
        return cond


CHEXPERT = FindingSchema(
    name="chexpert",
    columns=(
        "No Finding",
        "Enlarged Cardiomediastinum",
        "Cardiomegaly",
        "Lung Opacity",
        "Lung Lesion",
        "Edema",
        "Consolidation",
        "Pneumonia",
        "Atelectasis",
        "Pneumothorax",
        "Pleural Effusion",
        "Pleural Other",
        "Fracture",
        "Support Devices",
    ),
    non_findings=("No Finding", "Support Devices"),
)

NIH = FindingSchema(
    name="nih",
    columns=(
        "No Finding",
        "Atelectasis",
        "Cardiomegaly",
        "Effusion",
        "Infiltration",
        "Mass",
        "Nodule",
        "Pneumonia",
        "Pneumothorax",
        "Consolidation",
        "Edema",
        "Emphysema",
        "Fibrosis",
        "Pleural_Thickening",
        "Hernia",
    ),
    non_findings=("No Finding",),
)

SCHEMAS: dict[str, FindingSchema] = {s.name: s for s in (CHEXPERT, NIH)}
