"""Networks and model files, shared by every trainer and evaluator (imports :mod:`plumbing` only).

:mod:`models.backbones` (the backbone registry, :class:`~models.backbones.Backbone`,
:class:`~models.backbones.Classifier`, channel attention and correction blocks),
:mod:`models.model_file` (the one safetensors format every trainer exports and
every evaluator reads) and :mod:`models.initialisation` (where a backbone starts:
``scratch | imagenet | PATH | ssl:RUN``).
"""
