"""Measure one synthetic store against a reference data set: the image sets, the classifiers, the report's figures.

The image sets (all read once into memory at ``image_size``, class-balanced
where the data allow):

* ``S``: ``images`` images of the store's ``split`` (an equal number per class);
* ``R``: held-out reference images (the reference's evaluation split:
  phantoms' ``test`` seed stream, the official validation split of a real
  set), ``2 images / C`` per class where it has them: the two halves of the
  fidelity comparison and the test set of both classifiers;
* ``R_train`` and ``S_train``: ``train_images`` training images of the
  reference and of the store, which train the two classifiers of the report
  with the downstream protocol (:func:`evaluate.protocol.training.run_protocol`:
  learning rate chosen on a seeded 10% of the training images, best epoch by
  validation balanced accuracy, the same backbone and budget for both; a
  store with fewer training images is compared with a third classifier
  trained on as many reference images, while the classifier on all of
  ``R_train`` stays the judge of label fidelity and the feature extractor);
* ``T``: the generator's training images for memorisation (the data set its
  provenance names, or ``training_data``), at most ``training_images`` of them.

The classifier trained on ``R_train`` classifies ``S`` (label fidelity) and
gives the features of the report unless ``features`` names another extractor
(:mod:`evaluate.quality.features`). Both classifiers are run folders under
``runs_dir`` named by a key of their configuration and training images, so a
second report against the same reference trains nothing again, and an
interrupted training resumes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datasets.label_tasks import LabelTask, parse_label_task
from datasets.registry import build_dataset, get_spec
from datasets.synthetic import SyntheticDataset
from datasets.synthetic_store.reader import SyntheticStore
from evaluate.protocol.task_data import (
    DataChoice,
    TaskData,
    groups_of,
    labelled,
    labels_of,
    task_classes,
    validation_rows,
)
from evaluate.protocol.training import FinetuneConfig, run_protocol
from evaluate.quality.features import (
    XRV_CHOICE,
    FeatureCache,
    FeatureExtractor,
    apply_network,
    model_file_extractor,
    xrv_extractor,
)
from evaluate.quality.image_sets import ImageSet, InMemoryImages, balanced_rows, class_counts, read_image_set
from evaluate.quality.memorisation import COPY_FACTOR, Memorisation, memorisation, pixel_vectors
from evaluate.quality.sections import (
    coverage,
    fidelity,
    label_fidelity,
    memorisation_summary,
    reference_halves,
    usefulness,
)
from models.backbones import Classifier
from models.model_file import CLASSIFIER_FILE, load_classifier, read_model_info
from plumbing.errors import DataRoleError, UserError
from plumbing.run_folders import RESULTS_FILE, open_run, read_results_file, record_config
from plumbing.runtime import Runtime
from plumbing.training import checkpoints


@dataclass(frozen=True)
class QualityConfig:
    """What a quality report measures and how (``python -m evaluate.synthetic``'s options)."""

    reference: str = "phantom"
    reference_root: str | None = None
    split: str = "train"
    images: int = 1000
    train_images: int = 2000
    image_size: int | None = None
    features: str | None = None
    training_data: str | None = None
    training_root: str | None = None
    training_images: int = 10000
    backbone: str = "resnet18"
    epochs: int = 3
    lr: float | None = None
    lr_grid: tuple[float, ...] = (1e-4, 3e-4, 1e-3)
    batch_size: int = 32
    k: int = 5
    bootstrap: int = 100
    copy_factor: float = COPY_FACTOR
    seed: int = 0


@dataclass
class Measured:
    """The report's figures (``figures``, JSON-ready) and what its pictures show."""

    figures: dict[str, Any]
    synthetic: ImageSet
    reference: ImageSet
    training: ImageSet | None = None
    memorisation: dict[str, Memorisation] = field(default_factory=dict)


def _log(started: float, text: str) -> None:
    """``text`` on stderr after the seconds since ``started`` (``time.monotonic``)."""
    print(f"[{time.monotonic() - started:5.0f} s] {text}", file=sys.stderr)


def check_reference(store: SyntheticStore, cfg: QualityConfig) -> DataChoice:
    """The reference as a data choice of the store's task; another class list is one :class:`UserError` line."""
    spec = get_spec(cfg.reference)
    has_task = spec.schema is not None
    choice = DataChoice(cfg.reference, cfg.reference_root, store.version if has_task else None,
                        store.setting if has_task else None, None)
    classes = task_classes(choice)
    if classes != store.classes:
        raise UserError(f"--reference {cfg.reference} has the classes {', '.join(classes)}; the store "
                        f"{store.url} holds {', '.join(store.classes)} (task {store.task.name})")
    if spec.channels != 1:
        raise UserError(f"--reference {cfg.reference} has {spec.channels}-channel images; stores hold radiographs")
    try:
        spec.resolve_root(cfg.reference_root)
    except DataRoleError as exc:
        raise exc.in_role("reference") from None
    return choice


def _reference_set(choice: DataChoice, split: str, per_class: int, size: int, seed: int, desc: str,
                   progress: bool) -> ImageSet:
    """Up to ``per_class`` reference images of every class of ``split`` (phantoms: drawn class-balanced)."""
    spec = get_spec(choice.name)
    task: LabelTask | None = choice.task()
    num_classes = len(task_classes(choice))
    if "balanced" in spec.options and spec.count_option == "length":
        dataset = build_dataset(choice.name, root=choice.root, split=split, task=task, resolution=size,
                                balanced=True, seed=seed, **spec.count_options(per_class * num_classes))
        rows = None
    else:
        dataset = labelled(build_dataset(choice.name, root=choice.root, split=split, task=task, resolution=size),
                           choice, f"reference ({split})")
        rows = balanced_rows(labels_of(dataset), num_classes, per_class, seed)
    images = read_image_set(dataset, desc, rows=rows, progress=progress)
    groups = groups_of(dataset)
    if groups is not None:
        images.groups = groups if rows is None else groups[rows]
    return images


def _store_set(store: SyntheticStore, split: str, n: int, size: int, seed: int, desc: str,
               progress: bool) -> ImageSet:
    dataset = SyntheticDataset(store, split, resolution=size)
    rows = balanced_rows(dataset.labels, len(store.classes), max(1, n // len(store.classes)), seed)
    return read_image_set(dataset, desc, rows=rows, progress=progress)


def training_source(store: SyntheticStore, cfg: QualityConfig) -> tuple[str, dict[str, Any]] | None:
    """The data set the generator learned from and its reader options (provenance, or ``--training-data``).

    From the provenance also its length and, for a generator trained class-balanced
    over a label task (``synth.train --balance-task``), that task: it saw the
    task's members only.
    """
    training = store.attrs.generator.training
    name = cfg.training_data or training.get("data")
    if name is None:
        return None
    spec = get_spec(name)
    options: dict[str, Any] = {}
    if name == training.get("data"):
        if training.get("data_length") is not None:
            options.update(spec.count_options(int(training["data_length"])))
        if training.get("balance_task") is not None:
            options["task"] = parse_label_task(training["balance_task"], "the store's generator balance_task")
    return name, options


def _training_set(store: SyntheticStore, cfg: QualityConfig, size: int, progress: bool) -> ImageSet | None:
    source = training_source(store, cfg)
    if source is None:
        return None
    name, options = source
    dataset = build_dataset(name, root=cfg.training_root, split="train", resolution=size, **options)
    rows = np.arange(min(len(dataset), cfg.training_images))
    return read_image_set(dataset, f"generator training images ({name})", rows=rows, progress=progress)


def _extractor(cfg: QualityConfig, reference_classifier: Path) -> FeatureExtractor:
    if cfg.features == XRV_CHOICE:
        return xrv_extractor()
    return model_file_extractor(Path(cfg.features) if cfg.features else reference_classifier)


def trained_classifier(
    kind: str, train: ImageSet, test: ImageSet, classes: tuple[str, ...], cfg: QualityConfig, store: SyntheticStore,
    runtime: Runtime, command: str, size: int, log: Callable[[str], None],
) -> tuple[Classifier, dict[str, Any], Path]:
    """A classifier trained on ``train`` with the downstream protocol and scored on ``test``, cached by a key.

    Returns the classifier, its ``results.json`` and the run folder. The run records ``command``; ``log``
    receives the progress lines.
    """
    data_name = "synthetic" if kind == "synthetic" else cfg.reference
    has_task = get_spec(data_name).schema is not None
    finetune = FinetuneConfig(
        data=data_name, version=store.version if has_task else None, setting=store.setting if has_task else None,
        length=len(train), eval_data=cfg.reference, eval_length=len(test), backbone=cfg.backbone,
        image_size=size, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, lr_grid=cfg.lr_grid,
        seed=cfg.seed,
    )
    key = hashlib.sha256(json.dumps([finetune.to_dict(), train.content_key(), test.content_key()]).encode())
    run_dir = runtime.runs_dir / f"quality-{kind}-{key.hexdigest()[:16]}"
    if (run_dir / RESULTS_FILE).is_file() and (run_dir / CLASSIFIER_FILE).is_file():
        log(f"{kind} classifier: reusing {run_dir}")
        model, _ = load_classifier(run_dir / CLASSIFIER_FILE, runtime.device)
        return model, read_results_file(run_dir / RESULTS_FILE), run_dir
    run = open_run(runtime.runs_dir, run_dir.name, resume=bool(checkpoints(run_dir)))
    held = validation_rows(train.groups, len(train), cfg.seed)
    data = TaskData(
        classes, 1, InMemoryImages(train.subset(np.flatnonzero(~held), train.description)),
        InMemoryImages(train.subset(np.flatnonzero(held), train.description)), InMemoryImages(test),
        train.labels[torch.as_tensor(np.flatnonzero(~held))],
    )
    if run.checkpoint is not None:
        record = {k: v for k, v in run.checkpoint["run"]["config"].items() if k != "init_provenance"}
    else:
        record = {"finetune": finetune.to_dict(), "data_description": f"{train.description} ({len(train)} images)"}
    log(f"{kind} classifier: training {cfg.backbone} on {len(train)} images -> {run_dir}")
    run.create()
    with run.discarded_on_failure(f"the {kind} classifier diverged: "):
        record = record_config(run, record, command)
        results = run_protocol(finetune, data, runtime, run, record)
    model, _ = load_classifier(run_dir / CLASSIFIER_FILE, runtime.device)
    return model, results, run_dir


def provenance(store: SyntheticStore) -> dict[str, Any]:
    """What made the store: generator, its training, seeds, truncation, condition source and library versions."""
    attrs = store.attrs.to_dict()
    generator = store.attrs.generator
    training = generator.training
    keys = ("seed", "truncation", "truncation_center", "condition_source", "condition_policy", "created",
            "library_versions")
    return {
        "store": store.url,
        "task": store.task.name,
        "resolution": store.resolution,
        "generator_sha256": generator.sha256,
        "trained_on_phantoms": generator.trained_on_phantoms,
        "generator_training": {k: training.get(k) for k in ("data", "data_length", "kimg_done", "command",
                                                            "resumed_with") if k in training},
    } | {k: attrs[k] for k in keys if k in attrs}


def measure(store: SyntheticStore, cfg: QualityConfig, runtime: Runtime, command: str) -> Measured:
    """Every section of the report (module docstring); checks come first, so a bad option writes nothing.

    ``runtime`` says where the classifiers train and the features are computed; their run folders record
    ``command``. Progress lines on stderr carry the seconds since the call.
    """
    log = functools.partial(_log, time.monotonic())
    choice = check_reference(store, cfg)
    classes = store.classes
    c = len(classes)
    size = cfg.image_size or store.resolution
    store.split(cfg.split)
    if cfg.features not in (None, XRV_CHOICE):
        read_model_info(Path(cfg.features))  # a missing or foreign features file stops here
    if cfg.features == XRV_CHOICE:
        xrv_extractor()  # weights not on disk stop here
    source = training_source(store, cfg)
    if source is not None:
        try:  # a real training set without its root stops here
            get_spec(source[0]).resolve_root(cfg.training_root)
        except DataRoleError as exc:
            raise exc.in_role("training") from None
    eval_split = get_spec(cfg.reference).eval_split

    log(f"reading the image sets at {size} px")
    synthetic = _store_set(store, cfg.split, cfg.images, size, cfg.seed, f"synthetic ({cfg.split})", runtime.progress)
    reference = _reference_set(choice, eval_split, 2 * max(1, cfg.images // c), size, cfg.seed,
                               f"reference {cfg.reference} ({eval_split})", runtime.progress)
    syn_train = _store_set(store, "train", cfg.train_images, size, cfg.seed + 1, "synthetic (train)", runtime.progress)
    ref_train = _reference_set(choice, "train", max(1, cfg.train_images // c), size, cfg.seed,
                               f"reference {cfg.reference} (train)", runtime.progress)
    training = _training_set(store, cfg, size, runtime.progress)

    ref_model, ref_results, ref_dir = trained_classifier("reference", ref_train, reference, classes, cfg, store,
                                                         runtime, command, size, log)
    _, syn_results, syn_dir = trained_classifier("synthetic", syn_train, reference, classes, cfg, store, runtime,
                                                 command, size, log)
    real_train, real_results, real_dir = ref_train, ref_results, ref_dir
    if len(syn_train) < len(ref_train):  # a small store: train-on-real gets the same budget as train-on-synthetic
        real_train = ref_train.subset(balanced_rows(ref_train.labels, c, len(syn_train) // c, cfg.seed),
                                      f"{ref_train.description}, {len(syn_train)} images")
        _, real_results, real_dir = trained_classifier("reference", real_train, reference, classes, cfg, store,
                                                       runtime, command, size, log)

    log("features")
    extractor = _extractor(cfg, ref_dir / CLASSIFIER_FILE)
    cache = FeatureCache(runtime.runs_dir / "quality-features", runtime.device, runtime.bf16, runtime.progress)
    syn_f, ref_f = cache.features(extractor, synthetic), cache.features(extractor, reference)
    halves = reference_halves(synthetic.labels, reference.labels, c, cfg.seed)
    log("fidelity and coverage")
    logits = apply_network(ref_model, synthetic, size, device=runtime.device, amp=runtime.bf16, desc="label fidelity",
                           progress=runtime.progress)
    figures: dict[str, Any] = {
        "store": store.url,
        "reference": {"data": cfg.reference, "root": cfg.reference_root, "split": eval_split,
                      "images": class_counts(reference, classes)},
        "features": {"extractor": extractor.name, "key": extractor.key, "dimension": int(syn_f.shape[1])},
        "config": asdict(cfg) | {"lr_grid": list(cfg.lr_grid), "image_size": size},
        "classes": list(classes),
        "fidelity": fidelity(syn_f, ref_f, halves, classes, rounds=cfg.bootstrap, seed=cfg.seed),
        "coverage": coverage(syn_f, ref_f, halves, classes, k=cfg.k),
        "label_fidelity": label_fidelity(synthetic.labels, logits.argmax(dim=1), classes, ref_results["recall"])
        | {"classifier": str(ref_dir / CLASSIFIER_FILE)},
        "usefulness": usefulness(real_results, syn_results)
        | {"real_classifier": str(real_dir), "synthetic_classifier": str(syn_dir),
           "test_images": len(reference), "train_images": {"real": len(real_train), "synthetic": len(syn_train)}},
        "class_balance": {"counts": store.attrs.counts, "evaluated": class_counts(synthetic, classes)},
        "provenance": provenance(store),
    }
    measured = Measured(figures, synthetic, reference, training)
    if training is None:
        figures["memorisation"] = {"measured": False, "reason": "the store's provenance names no training data; "
                                   "pass --training-data"}
        return measured
    log("memorisation")
    spaces = {"features": (syn_f, cache.features(extractor, training)),
              "pixels": (pixel_vectors(synthetic.images), pixel_vectors(training.images))}
    figures["memorisation"] = {"measured": True, "training_images": len(training),
                               "training_data": training.description, "spaces": {}}
    for space, (fake, real) in spaces.items():
        result = memorisation(fake, real, factor=cfg.copy_factor)
        measured.memorisation[space] = result
        figures["memorisation"]["spaces"][space] = memorisation_summary(result)
    return measured
