"""Errors shared by the command line and the modules it dispatches to."""

from __future__ import annotations


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""
