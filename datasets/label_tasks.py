"""Label tasks: which images belong to which class (the seed's Table 3 versions).

A task is a *version* (its classes) and a *setting*:

=========  ===================================================
version    classes
=========  ===================================================
1          No Finding, Pneumothorax
2          No Finding, Finding
3          No Finding, Pneumothorax, Pneumonia, Cardiomegaly
=========  ===================================================

and ``0s`` (isolated findings) or ``Xs`` (findings combined with others).

Policy, applied to raw finding vectors (1 positive, 0 negative, -1 uncertain,
nan blank). Let the *findings* be the schema's columns other than its
``non_findings`` ("No Finding" and, for CheXpert, "Support Devices", which is
therefore ignored everywhere) and the *class findings* the version's classes
other than "No Finding" and "Finding".

* Views are filtered before this policy: the label tables keep the frontal
  views (PA and AP) by default.
* A finding is present iff its label is 1.
* ``No Finding`` (both settings): the "No Finding" column is 1 and no finding
  is 1 or -1.
* Class finding F, setting ``0s``: F is 1 and every other finding is 0 or
  blank.
* Class finding F, setting ``Xs``: F is 1 and no other class finding of the
  version is 1 or -1; the remaining findings may take any value.
* ``Finding`` (version 2), setting ``0s``: exactly one finding is 1 and no
  finding is -1. Setting ``Xs``: at least one finding is 1.
* Consequently an image whose class finding is -1 is excluded, classes are
  mutually exclusive, and an image matching no class gets the label -1
  (excluded).

NIH finding vectors hold only 1 and 0, so for ChestX-ray8/14 the rules reduce
to: No Finding = the "No Finding" label; F in 0s = F is the only finding;
F in Xs = F is the only class finding; Finding in 0s = exactly one finding;
Finding in Xs = any finding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from plumbing.errors import UserError
from plumbing.lookup import look_up

from .findings import NO_FINDING, FindingSchema

FINDING = "Finding"

VERSIONS: dict[int, tuple[str, ...]] = {
    1: (NO_FINDING, "Pneumothorax"),
    2: (NO_FINDING, FINDING),
    3: (NO_FINDING, "Pneumothorax", "Pneumonia", "Cardiomegaly"),
}
SETTINGS: tuple[str, ...] = ("0s", "Xs")


@dataclass(frozen=True)
class LabelTask:
    """One version and setting of the label policy (validated on construction)."""

    version: int
    setting: str

    def __post_init__(self) -> None:
        if (
            isinstance(self.version, bool)
            or not isinstance(self.version, int | np.integer)
            or self.version not in VERSIONS
        ):
            raise UserError(
                f"unknown label-task version {self.version!r}; valid versions: {', '.join(map(str, VERSIONS))}"
            )
        look_up("label-task setting", self.setting, SETTINGS)

    @property
    def classes(self) -> tuple[str, ...]:
        return VERSIONS[self.version]

    @property
    def name(self) -> str:
        return f"v{self.version}-{self.setting}"

    @property
    def class_findings(self) -> tuple[str, ...]:
        """The classes that name a single finding column."""
        return tuple(c for c in self.classes if c not in (NO_FINDING, FINDING))


def label_task(version: int, setting: str) -> LabelTask:
    """The task for ``version`` (1, 2, 3) and ``setting`` (``0s``, ``Xs``).

    A bad value is a :class:`UserError` that lists the valid ones.
    """
    return LabelTask(version, setting)


def parse_label_task(text: str, option: str) -> LabelTask:
    """The task named ``text``: ``VERSION-SETTING`` as in ``3-0s``, ``v3-Xs`` (any case), or a task's ``name``.

    A malformed value is one :class:`UserError` line that starts with
    ``option`` (the command-line option or field it came from) and lists the
    valid tasks.
    """
    version, _, setting = text.strip().lower().removeprefix("v").partition("-")
    canonical = {s.lower(): s for s in SETTINGS}
    if not version.isdigit() or int(version) not in VERSIONS or setting not in canonical:
        valid = ", ".join(f"{v}-{s}" for v in VERSIONS for s in SETTINGS)
        raise UserError(f"{option} {text!r} is not a label task VERSION-SETTING; valid: {valid}")
    return LabelTask(int(version), canonical[setting])


def class_membership(vectors: np.ndarray, schema: FindingSchema, task: LabelTask) -> np.ndarray:
    """Boolean ``[N, C]``: row i matches the rule of class c (at most one per row).

    See the module docstring for the rules.
    """
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 2 or v.shape[1] != len(schema.columns):
        raise ValueError(
            f"finding vectors of shape {v.shape} do not match the {len(schema.columns)} columns of {schema.name}"
        )
    missing = [c for c in task.class_findings if c not in schema.findings]
    if missing:
        raise UserError(f"task {task.name} needs the findings {', '.join(missing)}, which {schema.name} lacks")
    findings = v[:, schema.finding_indices]
    positive = findings == 1
    uncertain = findings == -1
    negative_or_blank = (findings == 0) | np.isnan(findings)
    n_positive = positive.sum(axis=1)
    any_uncertain = uncertain.any(axis=1)
    position = {name: j for j, name in enumerate(schema.findings)}
    class_cols = np.array([position[c] for c in task.class_findings], dtype=np.int64)
    positive_or_uncertain = positive | uncertain

    members = np.zeros((v.shape[0], len(task.classes)), dtype=bool)
    for c, name in enumerate(task.classes):
        if name == NO_FINDING:
            members[:, c] = (v[:, schema.index(NO_FINDING)] == 1) & ~positive_or_uncertain.any(axis=1)
        elif name == FINDING:
            members[:, c] = (n_positive == 1) & ~any_uncertain if task.setting == "0s" else n_positive >= 1
        else:
            j = position[name]
            others = np.ones(findings.shape[1], dtype=bool)
            others[j] = False
            if task.setting == "0s":
                rest_clear = negative_or_blank[:, others].all(axis=1)
            else:
                other_class = class_cols[class_cols != j]
                rest_clear = ~positive_or_uncertain[:, other_class].any(axis=1)
            members[:, c] = positive[:, j] & rest_clear
    return members


def assign_classes(vectors: np.ndarray, schema: FindingSchema, task: LabelTask) -> np.ndarray:
    """Class index of each finding vector (``[N]`` int64; -1 = excluded)."""
    members = class_membership(vectors, schema, task)
    return np.where(members.any(axis=1), members.argmax(axis=1), -1).astype(np.int64)


def class_counts(vectors: np.ndarray, schema: FindingSchema, task: LabelTask) -> dict[str, int]:
    """Number of rows per class, in class order (excluded rows are not counted)."""
    labels = assign_classes(vectors, schema, task)
    counts = np.bincount(labels[labels >= 0], minlength=len(task.classes))
    return {name: int(n) for name, n in zip(task.classes, counts, strict=True)}


def finding_distribution(
    vectors: np.ndarray, schema: FindingSchema, task: LabelTask
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per class, the empirical distribution of its members' condition vectors.

    For class c with members M_c, returns the unique rows u_1..u_m of
    ``schema.condition(vectors[M_c])`` ([m, K] float32) and p_j = #{i in M_c :
    condition_i = u_j} / |M_c| ([m] float64, summing to 1), ordered by
    decreasing probability. A class without members is a :class:`UserError`.
    """
    labels = assign_classes(vectors, schema, task)
    condition = schema.condition(vectors)
    result: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for c, name in enumerate(task.classes):
        rows = condition[labels == c]
        if len(rows) == 0:
            raise UserError(f"task {task.name}: class {name!r} has no member in these {schema.name} labels")
        unique, counts = np.unique(rows, axis=0, return_counts=True)
        order = np.argsort(-counts, kind="stable")
        result[name] = (unique[order].astype(np.float32), counts[order] / counts.sum())
    return result


def parse_task(version: str, setting: str) -> LabelTask:
    """A :class:`LabelTask` from command-line strings (``3`` or ``v3``; ``0s`` / ``Xs``, any case)."""
    text = version.strip().lower().removeprefix("v")
    if not text.isdigit():
        raise UserError(f"--version {version!r} is not a version; valid versions: {', '.join(map(str, VERSIONS))}")
    canonical = {s.lower(): s for s in SETTINGS}.get(setting.strip().lower(), setting)
    return label_task(int(text), canonical)
