"""Exceptions that separate a user's bad input from a bug."""


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
