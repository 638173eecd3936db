"""Unsupervised domain adaptation from synthetic to real radiographs (DCAN).

Library modules: :mod:`adapt.config` (the run configuration and the
``none`` / ``dcan`` / ``ours`` presets), :mod:`adapt.losses` (pure loss
functions), :mod:`adapt.model` (the network), :mod:`adapt.data` (source,
target and evaluation images), :mod:`adapt.selection` (label-free model
selection, collapse detection), :mod:`adapt.trainer` (the step and the
Ignite engine) and :mod:`adapt.cells` (grid cells and results). Commands:
``python -m adapt.train`` and ``python -m adapt.report``.
"""
