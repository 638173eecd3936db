"""Running a project command from a benchmark script: ``python -m MODULE ARGS`` in a child process."""

from __future__ import annotations

import subprocess
import sys

from plumbing.errors import UserError


def run_module(args: list[str]) -> None:
    """Run ``python -m args[0] args[1:]``, echoed to stderr; a failure is one :class:`UserError` line."""
    print("$ python -m " + " ".join(args), file=sys.stderr, flush=True)
    done = subprocess.run([sys.executable, "-m", *args])
    if done.returncode:
        raise UserError(f"python -m {args[0]} stopped with exit code {done.returncode} (its message is above)")
