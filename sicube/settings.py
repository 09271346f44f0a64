"""Process-wide settings: zarr's codec threads and giving freed memory back to the OS.

`sicube.build`, `sicube.update` and the CLI apply them (`apply`), so a build from Python or a
notebook runs as the command line does; `configure` changes them for the process.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from dataclasses import dataclass

from sicube.errors import BadInput


@dataclass(frozen=True)
class Settings:
    """What `configure` set: see there."""

    codec_threads: int | None = None
    trim_memory: bool = True


_current = Settings()
_ours: int | None = None  # the zarr thread count this module set last (None: none yet)
_warned = False


def configure(codec_threads: int | None = None, trim_memory: bool = True) -> Settings:
    """Set sicube's process-wide settings and apply them now; returns them.

    `codec_threads`: threads zarr encodes and decodes chunks on (zarr's
    ``threading.max_workers``). None: one per core, unless zarr's setting was given by the
    user (zarr.config or ZARR_THREADING__MAX_WORKERS). Zarr's default, cores + 4, adds no
    speed to CPU-bound codec work, only glibc malloc arenas that keep freed chunk buffers: a
    build's peak memory then creeps up with its span (benchmarks/RESULTS.md, "## Build").
    Zarr makes its pool on first use, so this takes effect only before then; a warning says
    when the pool already exists with another size.

    `trim_memory`: after each fill batch, give freed heap back to the OS (glibc's
    malloc_trim; nothing elsewhere), so a long build's resident size does not drift up.
    """
    global _current
    if codec_threads is not None and (isinstance(codec_threads, bool)
                                      or not isinstance(codec_threads, int)
                                      or codec_threads < 1):
        raise BadInput(f"codec_threads must be a positive integer or None, got {codec_threads!r}")
    _current = Settings(codec_threads, bool(trim_memory))
    return apply()


def current() -> Settings:
    """The settings in force (the defaults until `configure` is called)."""
    return _current


def apply() -> Settings:
    """Apply the settings in force to this process (build, update and the CLI call this)."""
    global _ours
    import zarr

    threads = _current.codec_threads
    given = zarr.config.get("threading.max_workers", None)
    if threads is None:
        if given is not None and given != _ours:  # the user's own zarr setting is kept
            return _current
        threads = os.cpu_count() or 1
    if given != threads:
        zarr.config.set({"threading.max_workers": threads})
    _ours = threads
    _warn_if_pool_differs(threads)
    return _current


def zarr_pool_size() -> int | None:
    """Threads of zarr's codec pool when zarr has made it in this process, else None."""
    sync = sys.modules.get("zarr.core.sync")
    executor = getattr(sync, "_executor", None)
    return getattr(executor, "_max_workers", None)


def _warn_if_pool_differs(threads: int) -> None:
    global _warned
    size = zarr_pool_size()
    if size is None or size == threads or _warned:
        return
    _warned = True
    warnings.warn(f"zarr's codec thread pool already exists with {size} threads, so "
                  f"codec_threads={threads} does not apply in this process: call "
                  "sicube.configure before anything reads or writes Zarr",
                  RuntimeWarning, stacklevel=4)


def release_memory() -> None:
    """Give freed heap back to the OS when `trim_memory` is set (glibc keeps it in per-thread
    arenas otherwise, and the resident size after each fill batch drifts up)."""
    trim = _glibc("malloc_trim") if _current.trim_memory else None
    if trim is not None:
        trim(0)


def keep_freed_memory() -> bool:
    """Have glibc keep this process's freed memory for its next allocations rather than
    hand it back to the OS at once; True where it did (glibc), False elsewhere.

    A buffer of chunk size (1-32 MB) is then carved from the heap, not mapped afresh, and
    freed memory up to 256 MB stays with the process. Memory the OS hands out is faulted in
    page by page as it is first touched, which on the benchmark machine cost more than the
    work in it: a daily update reads, fills and writes its chunks block by block, and its
    process ran ~0.3 s faster this way (benchmarks/RESULTS.md, "Update"), at +60-80 MB. The
    `sicube update` process sets it (`sicube.__main__`); a build does not (its peak over a
    long span matters more, and it was no faster)."""
    mallopt = _glibc("mallopt")
    if mallopt is None:
        return False
    return all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 256 << 20), (_M_TOP_PAD, 64 << 20)))


_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc's malloc.h


@functools.cache
def _glibc(name: str):
    """glibc's function `name`, looked up once; None elsewhere (macOS, musl, Windows).

    Looked up in the symbols the process already has loaded: `ctypes.util.find_library`
    would run `ldconfig` in a child process at every call, a fork of a ~1 GB process.
    """
    import ctypes

    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError, TypeError):
        return None
