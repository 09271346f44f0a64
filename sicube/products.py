"""The Bremen AMSR2 ASI daily-grid product: URL layout, file names, grids and grid mapping.

This module is the one place that knows these facts; every other module asks it.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

DEFAULT_BASE_URL = "https://data.seaice.uni-bremen.de/amsr2/asi_daygrid_swath/n3125/netcdf"
DATA_START = dt.date(2012, 7, 2)
VERSION = "v5.4"
# From this day on the files declare WGS84 (EPSG:3413) instead of the Hughes ellipsoid (EPSG:3411).
WGS84_FROM = dt.date(2018, 11, 2)
CONC_VAR = "z"


@dataclass(frozen=True)
class Grid:
    """A polar stereographic grid of the product: its name, size and extent in metres."""

    name: str
    ny: int
    nx: int
    cell_size: float
    x_min: float  # west edge of the first cell, metres
    y_min: float  # south edge of the first cell, metres
    epsg_hughes: int
    epsg_wgs84: int

    def x(self, step: int = 1) -> np.ndarray:
        """Cell-centre x coordinates in metres of the grid coarsened `step` times."""
        size = self.cell_size * step
        return self.x_min + size * (np.arange(self.nx // step) + 0.5)

    def y(self, step: int = 1) -> np.ndarray:
        """Cell-centre y coordinates in metres, ascending."""
        size = self.cell_size * step
        return self.y_min + size * (np.arange(self.ny // step) + 0.5)

    def epsg(self, day: dt.date) -> int:
        """EPSG code the file of `day` declares."""
        return self.epsg_wgs84 if day >= WGS84_FROM else self.epsg_hughes


GRIDS = {
    "n3125": Grid("n3125", 3584, 2432, 3125.0, -3_850_000.0, -5_350_000.0, 3411, 3413),
    "n6250": Grid("n6250", 1792, 1216, 6250.0, -3_850_000.0, -5_350_000.0, 3411, 3413),
    "s3125": Grid("s3125", 2656, 2528, 3125.0, -3_950_000.0, -3_950_000.0, 3412, 3976),
    "s6250": Grid("s6250", 1328, 1264, 6250.0, -3_950_000.0, -3_950_000.0, 3412, 3976),
}

_FILE_NAME = re.compile(r"asi-AMSR2-(?P<grid>[ns]\d{4})-(?P<day>\d{8})-(?P<version>v[\d.]+)\.nc$")


def file_name(day: dt.date, grid: str = "n3125") -> str:
    """Name of the daily file, e.g. asi-AMSR2-n3125-20240401-v5.4.nc."""
    return f"asi-AMSR2-{grid}-{day:%Y%m%d}-{VERSION}.nc"


def relative_path(day: dt.date, grid: str = "n3125") -> str:
    """Path of the daily file below the base URL: {YYYY}/{file name}."""
    return f"{day:%Y}/{file_name(day, grid)}"


def file_url(base_url: str, day: dt.date, grid: str = "n3125") -> str:
    """Full URL of the daily file under `base_url`."""
    return f"{base_url.rstrip('/')}/{relative_path(day, grid)}"


def grid_from_url(base_url: str) -> str:
    """Grid name a base URL serves (its path names it, as on the Bremen server); n3125 otherwise."""
    found = re.search(r"/([ns](?:3125|6250))(?:/|$)", base_url)
    return found.group(1) if found else "n3125"


def parse_file_name(name: str) -> tuple[str, dt.date] | None:
    """Return (grid, day) of a product file name, or None when the name is not one."""
    found = _FILE_NAME.search(name)
    if not found:
        return None
    try:
        day = dt.datetime.strptime(found.group("day"), "%Y%m%d").date()
    except ValueError:
        return None
    return found.group("grid"), day


@lru_cache(maxsize=8)
def grid_mapping_attrs(epsg: int) -> dict:
    """CF grid-mapping attributes (with WKT) for a polar stereographic EPSG code."""
    from pyproj import CRS

    crs = CRS.from_epsg(epsg)
    attrs = {k: v for k, v in crs.to_cf().items() if v is not None}
    attrs["spatial_ref"] = attrs["crs_wkt"]  # what GDAL and rioxarray look for
    attrs["epsg_code"] = f"EPSG:{epsg}"
    return attrs


def epsg_from_attrs(attrs) -> int | None:
    """EPSG code a grid-mapping variable's attributes declare (`epsg_code`), or None."""
    code = str(attrs.get("epsg_code", "")).split(":")[-1]
    return int(code) if code.isdigit() else None
