"""The `sicube` process: `python -m sicube ...` and the `sicube` script (`run`)."""

import gc
import sys


def run() -> None:
    """`sicube.cli.main` on the command line, exiting with its code.

    Python's cyclic garbage collector is paused while the command's modules load, and what
    they made is then frozen out of every later collection (`gc.freeze`), the one at exit
    included: numba, zarr and the rest leave hundreds of thousands of objects that live as
    long as the process, and each full collection walks them all again. That walk cost a
    one-day update ~0.3 s (issue 22; benchmarks/RESULTS.md, "Update"). Only here, in the
    process's own entry: a program that calls `main` (the tests) keeps its collector as is.

    The `update` process also keeps the memory it frees for reuse
    (`sicube.settings.keep_freed_memory`): a daily cron job's work goes block by block.
    """
    gc.disable()
    if sys.argv[1:2] == [KEEPS_FREED_MEMORY]:
        from sicube.settings import keep_freed_memory

        keep_freed_memory()
    from sicube.cli import main

    code = main(loaded=_freeze_loaded)
    gc.freeze()  # and what the run made: not walked again at exit
    sys.exit(code)


# The command whose process keeps the memory it frees (`run`).
KEEPS_FREED_MEMORY = "update"


def _freeze_loaded() -> None:
    """Freeze what the imports made and turn the collector back on for the run."""
    gc.freeze()
    gc.enable()


if __name__ == "__main__":
    run()
