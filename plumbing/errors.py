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


OPTION = "{option}"
"""Where a :class:`DataRoleError` message names the option of the data set that failed."""


class DataRoleError(UserError):
    """A user mistake about one data set of a command (its root, its images), told by the library in the words of
    the command that called it.

    The library knows the data set and, at best, its ``role`` in the work (``"train"``, ``"evaluation"``,
    ``"pretext"``...), not the option a command gives for it; its ``template`` holds :data:`OPTION` where the
    option goes. Until a command names it (:meth:`named`, :func:`plumbing.cli.data_options`), the message
    reads ``--data-root``. :meth:`in_role` sets the role where a caller knows it (an inner role stays).
    """

    GENERIC = "--data-root"

    def __init__(self, template: str, role: str | None = None) -> None:
        self.template, self.role = template, role
        super().__init__(template.replace(OPTION, self.GENERIC))

    def in_role(self, role: str) -> DataRoleError:
        """This error with ``role``, unless it already has one."""
        return self if self.role is not None else DataRoleError(self.template, role)

    def named(self, option: str) -> UserError:
        """The plain :class:`UserError` whose message names ``option``."""
        return UserError(self.template.replace(OPTION, option))
