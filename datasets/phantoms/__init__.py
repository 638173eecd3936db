"""Procedural phantom chest radiographs, rendered in batches with torch.

* :mod:`.render`: :func:`~.render.render_batch` (finding vectors and seeds in,
  images and lung masks out);
* :mod:`.streams`: per-sample random streams (determinism);
* :mod:`.canvas`: coordinate frames and the placed real lung masks
  (``datasets/assets/lung_masks.npz``);
* :mod:`.anatomy`: normal anatomy; :mod:`.appearances`: finding layers and
  the schema mapping; :mod:`.devices`: support devices;
* :mod:`.styles`: the scanner styles of the ``phantom`` and ``phantom-nih`` domains;
* :mod:`.geometry`: shape primitives.

The data sets built on it are in :mod:`.dataset`; the picture-grid command is :mod:`datasets.phantom_grid`.
"""
