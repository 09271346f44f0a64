"""sicube: AMSR2 sea-ice concentration to analysis- and ML-ready Zarr datacubes."""

__version__ = "0.1.0"

# --- download (sicube.download) ---
from sicube.download import download, iter_downloads  # noqa: E402, F401
