"""sicube: AMSR2 sea-ice concentration to analysis- and ML-ready Zarr datacubes.

The public API. Every name loads its module on first use, so `import sicube` stays light
(no dask, numba, xarray, zarr or torch until a function needs them).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING

from sicube._version import __version__ as __version__

# Public name -> the module that defines it.
_EXPORTS = {
    "BuildSummary": "sicube.build", "build": "sicube.build", "update": "sicube.build",
    "climatology": "sicube.climatology", "extent": "sicube.extent",
    "FillFlag": "sicube.cube", "IncompleteCube": "sicube.cube", "open_cube": "sicube.cube",
    "BadInput": "sicube.errors", "BadSourceFile": "sicube.errors",
    "MissingExtra": "sicube.errors", "SicubeError": "sicube.errors",
    "DownloadOptions": "sicube.params", "FillParams": "sicube.params",
    "QualityRules": "sicube.params",
    "configure": "sicube.settings",
    "SICDataset": "sicube.dataset", "SICStream": "sicube.dataset",
    "download": "sicube.download", "iter_downloads": "sicube.download",
    "evaluate_fill": "sicube.evaluate",
    "gaussian_fill": "sicube.fill",
    "export_mask": "sicube.mask",
    "explore": "sicube.plot", "plot_compare": "sicube.plot", "plot_day": "sicube.plot",
    "plot_mask": "sicube.plot",
    "info": "sicube.report", "roi_report": "sicube.report",
    "write_archive": "sicube.sample",
    "open_store": "sicube.store",
}

__all__ = [  # the names of _EXPORTS (tests/test_imports.py checks they agree)
    "BadInput", "BadSourceFile", "BuildSummary", "DownloadOptions", "FillFlag", "FillParams",
    "IncompleteCube", "MissingExtra", "QualityRules", "SICDataset", "SICStream", "SicubeError",
    "build", "climatology", "configure",
    "download", "evaluate_fill", "explore", "export_mask", "extent", "gaussian_fill", "info",
    "iter_downloads", "open_cube", "open_store", "plot_compare", "plot_day", "plot_mask",
    "roi_report", "update",
    "write_archive",
]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time `__getattr__` loads them
    from sicube.build import BuildSummary, build, update
    from sicube.climatology import climatology
    from sicube.cube import FillFlag, IncompleteCube, open_cube
    from sicube.dataset import SICDataset, SICStream
    from sicube.download import download, iter_downloads
    from sicube.errors import BadInput, BadSourceFile, MissingExtra, SicubeError
    from sicube.evaluate import evaluate_fill
    from sicube.extent import extent
    from sicube.fill import gaussian_fill
    from sicube.mask import export_mask
    from sicube.params import DownloadOptions, FillParams, QualityRules
    from sicube.plot import explore, plot_compare, plot_day, plot_mask
    from sicube.report import info, roi_report
    from sicube.sample import write_archive
    from sicube.settings import configure
    from sicube.store import open_store


def __getattr__(name: str):
    """Load a public name's module on first use (PEP 562) and keep the name here."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sicube' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """The package module, whose `build`, `download`, `extent` and `climatology` stay the
    functions.

    Importing a submodule sets it as an attribute of its package; for these four functions,
    named like their modules (sicube/build.py, download.py, extent.py, climatology.py), that
    would make `sicube.build` the module or the function depending on what was imported
    first. It can go once those modules no longer share the functions' names.
    """

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == value.__name__:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
