"""sicube: AMSR2 sea-ice concentration to analysis- and ML-ready Zarr datacubes.

The public API. Every name loads its module on first use, so `import sicube` stays light
(no dask, numba, xarray, zarr or torch until a function needs them).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from sicube._version import __version__ as __version__

# Public name -> the module that defines it.
_EXPORTS = {
    "BuildSummary": "sicube.pipeline.summary", "build": "sicube.pipeline.build",
    "update": "sicube.pipeline.build",
    "climatology": "sicube.analysis.climatology", "extent": "sicube.analysis.extent",
    "FillFlag": "sicube.datacube.cube", "IncompleteCube": "sicube.datacube.cube",
    "open_cube": "sicube.datacube.cube",
    "BadInput": "sicube.errors", "BadSourceFile": "sicube.errors",
    "MissingExtra": "sicube.errors", "SicubeError": "sicube.errors",
    "DownloadOptions": "sicube.params", "FillParams": "sicube.params",
    "QualityRules": "sicube.params",
    "configure": "sicube.settings",
    "SICDataset": "sicube.ml.dataset", "SICStream": "sicube.ml.stream",
    "SamplePlan": "sicube.ml.sample_plan",
    "download": "sicube.archive.download", "iter_downloads": "sicube.archive.download",
    "evaluate_fill": "sicube.analysis.evaluate",
    "gaussian_fill": "sicube.kernels.fill",
    "export_mask": "sicube.pipeline.mask",
    "explore": "sicube.views.plot", "plot_compare": "sicube.views.plot",
    "plot_day": "sicube.views.plot",
    "plot_mask": "sicube.views.plot",
    "info": "sicube.analysis.report", "roi_report": "sicube.analysis.report",
    "write_archive": "sicube.archive.synthetic",
    "open_store": "sicube.datacube.store",
}

__all__ = [  # the names of _EXPORTS (tests/test_imports.py checks they agree)
    "BadInput", "BadSourceFile", "BuildSummary", "DownloadOptions", "FillFlag", "FillParams",
    "IncompleteCube", "MissingExtra", "QualityRules", "SICDataset", "SICStream", "SamplePlan",
    "SicubeError",
    "build", "climatology", "configure",
    "download", "evaluate_fill", "explore", "export_mask", "extent", "gaussian_fill", "info",
    "iter_downloads", "open_cube", "open_store", "plot_compare", "plot_day", "plot_mask",
    "roi_report", "update",
    "write_archive",
]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time `__getattr__` loads them
    from sicube.analysis.climatology import climatology
    from sicube.analysis.evaluate import evaluate_fill
    from sicube.analysis.extent import extent
    from sicube.analysis.report import info, roi_report
    from sicube.archive.download import download, iter_downloads
    from sicube.archive.synthetic import write_archive
    from sicube.datacube.cube import FillFlag, IncompleteCube, open_cube
    from sicube.datacube.store import open_store
    from sicube.errors import BadInput, BadSourceFile, MissingExtra, SicubeError
    from sicube.kernels.fill import gaussian_fill
    from sicube.ml.dataset import SICDataset
    from sicube.ml.sample_plan import SamplePlan
    from sicube.ml.stream import SICStream
    from sicube.params import DownloadOptions, FillParams, QualityRules
    from sicube.pipeline.build import build, update
    from sicube.pipeline.mask import export_mask
    from sicube.pipeline.summary import BuildSummary
    from sicube.settings import configure
    from sicube.views.plot import explore, plot_compare, plot_day, plot_mask


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
