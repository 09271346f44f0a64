"""Exceptions that separate a user's bad input from a bug, and the one line each says."""

import errno
import os
import sys


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


def warning_line(command: str, show):
    """`warnings.showwarning` for the CLI: sicube's own warnings (a newer cube) as one line
    on stderr, each once (a command may open a cube several times); others as `show` does."""
    from sicube.datacube.record import NewerCubeWarning

    said: set[str] = set()

    def show_line(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, NewerCubeWarning):
            if str(message) not in said:
                said.add(str(message))
                print(f"sicube {command}: warning: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    return show_line


def not_unretrieved_futures(record) -> bool:
    """A logging filter for asyncio: drops "exception was never retrieved" reports (zarr's
    concurrent reads of an unreadable store; the first failure is the error reported)."""
    return not record.getMessage().startswith(("Future exception was never retrieved",
                                               "Task exception was never retrieved"))


def closed_pipe() -> int:
    """The reader of stdout went away (`sicube info cube.zarr | head`): stop quietly.

    What is still buffered goes to /dev/null, so that Python's flush at exit does not
    report the broken pipe again; 141 is what a shell reports for a command ended by SIGPIPE.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + 13
