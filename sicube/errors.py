"""Exceptions that separate a user's bad input from a bug, and the one line each says."""

import errno
import os


class SicubeError(Exception):
    """Base class for errors sicube raises on purpose."""


class BadInput(SicubeError, ValueError):
    """The caller gave something sicube cannot use; the CLI prints it on one line and exits 2."""


class BadSourceFile(SicubeError):
    """A daily source file is not a usable AMSR2 grid (not netCDF, wrong variables, wrong grid)."""


class SourceUnavailable(SicubeError):
    """A server could not be reached or kept failing (refused, timed out, 5xx after retries)."""


class MissingExtra(SicubeError, ImportError):
    """A part of sicube was used whose optional dependencies (a pip extra) are not installed."""


def require_extra(extra: str, user: str, *modules: str) -> None:
    """MissingExtra, naming the extra to install, unless every one of `modules` is installed.

    Looks for them without importing them (so a check at import time costs nothing).
    """
    import importlib.util

    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package missing, or a broken entry
            found = False
        if not found:
            raise MissingExtra(f"{user} needs the '{extra}' extra ({module} is not installed): "
                               f"pip install 'sicube[{extra}]'")


def os_error_line(err: OSError) -> str:
    """An OSError (the environment: unreadable, unwritable, disk full) as one line naming
    the path and the system's reason, as the CLI prints it."""
    reason = err.strerror or (errno.errorcode.get(err.errno, "") if err.errno else "") or str(err)
    if err.filename is None:
        return " ".join(str(err).split()) or reason
    where = os.fsdecode(err.filename)
    if err.filename2 is not None:
        where += f" -> {os.fsdecode(err.filename2)}"
    return f"{where}: {reason}"
