"""The data layer: readers, the label-task policy, phantom radiographs and the synthetic-store schema.

Every data set is reached by name through :func:`datasets.registry.build_dataset`
and yields samples in the convention of :mod:`datasets.sample`.
"""
