"""sicube: AMSR2 sea-ice concentration to analysis- and ML-ready Zarr datacubes.

The public API; `import sicube` stays light (torch and plotting load on first use).
"""

__version__ = "0.1.0"

from sicube.build import BuildSummary, build, update  # noqa: E402
from sicube.cube import open_cube  # noqa: E402
from sicube.download import download, iter_downloads  # noqa: E402
from sicube.evaluate import evaluate_fill  # noqa: E402
from sicube.fill import FillFlag, gaussian_fill  # noqa: E402
from sicube.mask import export_mask  # noqa: E402
from sicube.plot import explore, plot_compare, plot_day, plot_mask  # noqa: E402
from sicube.report import info, roi_report  # noqa: E402
from sicube.sample import write_archive  # noqa: E402

__all__ = [
    "BuildSummary", "FillFlag", "SICDataset", "SICStream", "build", "download",
    "evaluate_fill", "explore", "export_mask", "gaussian_fill", "info", "iter_downloads",
    "open_cube", "plot_compare", "plot_day", "plot_mask", "roi_report", "update",
    "write_archive",
]

# --- dataset (lazy: importing torch takes seconds; `import sicube` must not) ---
_LAZY = {"SICDataset": "sicube.dataset", "SICStream": "sicube.dataset"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sicube' has no attribute {name!r}")
