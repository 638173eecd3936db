"""Curricular self-supervised learning, and a transparent stand-in for the standard ``ssl``.

This package is named ``ssl`` so that ``python -m ssl.curriculum`` works, which
puts the repository root first on ``sys.path``; from there, ``import ssl``
finds this package before the standard library's TLS module, which ``torch``,
``urllib.request``, ``asyncio`` and others need. To keep every library
working, this ``__init__`` executes the standard library's ``ssl.py`` in its
own namespace: ``ssl.create_default_context``, ``ssl.SSLContext`` and every
other public name are the real ones, and the package's ``__path__`` still
exposes the project's own sub-modules (the curricular SSL pipeline).

When the standard module was imported first (the repository root was not
first on ``sys.path``), the project's sub-modules are not reachable; the
commands are run from the repository root.
"""

from __future__ import annotations

import importlib.machinery as _machinery
import os as _os
import sysconfig as _sysconfig


def _stdlib_ssl_code():  # noqa: ANN202 - a code object
    stdlib = _sysconfig.get_paths()["stdlib"]
    spec = _machinery.PathFinder.find_spec("ssl", [stdlib])
    if spec is None or spec.loader is None or not _os.path.basename(str(spec.origin)) == "ssl.py":
        raise ImportError(f"the standard library's ssl.py was not found in {stdlib}")
    return spec.loader.get_code("ssl")


exec(_stdlib_ssl_code(), globals())  # noqa: S102 - runs the standard library's own ssl.py
