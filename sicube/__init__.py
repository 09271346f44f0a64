"""sicube: AMSR2 sea-ice concentration to analysis- and ML-ready Zarr datacubes."""

__version__ = "0.1.0"

# --- maps and reports (sicube.plot, sicube.report) ---
from sicube.plot import explore, plot_compare, plot_day, plot_mask  # noqa: E402, F401
from sicube.report import info, roi_report  # noqa: E402, F401
