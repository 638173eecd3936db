"""Evaluation library the trainers call, and four commands; it imports no pillar.

Commands: ``python -m evaluate.finetune`` (the downstream protocol),
``python -m evaluate.attention`` (AIL of a run's classifier),
``python -m evaluate.synthetic`` (how far a synthetic store can be trusted)
and ``python -m evaluate.report`` (the study report over a runs folder; it
reads the pillars' tables through their commands, never an import).

Library:

* :mod:`evaluate.metrics`: classification metrics as Ignite metrics (shared);
* :mod:`evaluate.plots`: the pictures run folders keep (curves, confusion
  matrices), drawn with matplotlib;
* :mod:`evaluate.protocol`: the downstream protocol - the task's images and
  splits (:mod:`~evaluate.protocol.task_data`), the class-balanced loss
  (:mod:`~evaluate.protocol.losses`) and training with learning-rate choice
  (:mod:`~evaluate.protocol.training`);
* :mod:`evaluate.ail`: attention inside the lungs - class activation maps
  (:mod:`~evaluate.ail.cam`), lung masks (:mod:`~evaluate.ail.lung_masks`) and the
  measurement over a data set (:mod:`~evaluate.ail.measurement`);
* :mod:`evaluate.quality`: synthetic-store quality - image sets, features,
  distances between feature sets, memorisation, the report's sections, the
  measurement of a store and the written report;
* :mod:`evaluate.study`: the study report's survey of a runs folder, its
  pictures and its pages.
"""
