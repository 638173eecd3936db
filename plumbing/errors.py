"""The one error type for user mistakes, shared by library and command code.

Library code (readers, networks, trainers) raises :class:`UserError` for bad
input; the command layer (:func:`plumbing.cli.run_cli`) prints it as one line
on stderr and exits with code 2. Keeping it here lets model code raise it
without importing the command-line module.
"""

from __future__ import annotations


class UserError(Exception):
    """An error caused by the user's input (arguments, files, data roots).

    The message must fit on one line and say what was expected.
    """
