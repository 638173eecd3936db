"""The synthetic data set store (Zarr 3): what ``synth.generate`` writes and every synthetic reader opens.

Modules, in the order they build on each other:

- :mod:`~datasets.synthetic_store.format`: the schema (root attributes as the
  typed :class:`~datasets.synthetic_store.format.StoreAttrs` record, arrays,
  blocks and their checksums), the chunk and block layout, the codecs.
- :mod:`~datasets.synthetic_store.zarr_access`: zarr stores for local paths
  and fsspec URLs, the root attributes as stored, listing the objects.
- :mod:`~datasets.synthetic_store.integrity`: damaged blocks, how the checks
  on open, while reading and in full find them, and the one error line that
  names them.
- :mod:`~datasets.synthetic_store.reader`: ``open_synthetic``, a store's
  splits with checked reads, the cheap and the full check (``verify_store``).
- :mod:`~datasets.synthetic_store.writer`: ``SyntheticStoreWriter`` (resumable,
  kill-safe block writes, ``finish``) and ``write_pending_blocks``.

The torch data set on top (registered as ``synthetic``) is :mod:`datasets.synthetic`;
``python -m datasets.verify STORE`` runs the full check.
"""
