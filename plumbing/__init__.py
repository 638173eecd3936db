"""Shared plumbing for every command: CLI conventions, devices, run folders.

The pillars (``synth``, ``adapt``, ``ssl``) and ``datasets`` use this package so
that every command behaves the same way (``--help`` with defaults, ``--device``,
``--runs-dir``, one-line errors with exit code 2).
"""
