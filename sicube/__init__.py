"""sicube: AMSR2 sea-ice concentration to analysis- and ML-ready Zarr datacubes."""

__version__ = "0.1.0"

from sicube.fill import FillFlag, gaussian_fill  # noqa: E402, F401
