"""The project's error types share one base, :class:`MosaicError`.

The CLI turns a :class:`MosaicError` into one line on stderr (the traceback only behind
``--log-level debug``) and an exit code: 2 for a :class:`UsageError` (a bad config, command line
or input that could be fixed before any work starts), 1 for every other failure at run time.
Each concrete error keeps its historical builtin base (``ValueError``, ``RuntimeError``) too, so
existing ``except ValueError`` code keeps working.
"""

from __future__ import annotations


class MosaicError(Exception):
    """Base of every error this project raises on purpose (message = one line for the user)."""


class UsageError(MosaicError):
    """A problem the user can fix in the config, the command line or the input before work
    starts (the CLI exits 2)."""
