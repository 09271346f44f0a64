"""The Bremen ASI daily-grid product: sensors, URL layout, file names, grids and grid mapping.

This module is the one place that knows these facts; every other module asks it.

Sensors: AMSR2 (from 2012-07-02, every grid, ``asi-AMSR2-{grid}-{YYYYMMDD}-v5.4.nc``) and its
predecessor AMSR-E (2002-06-01..2011-10-04, n6250 and s6250 only, ``asi-{grid}-{YYYYMMDD}-
v5.4.nc``). ``sensor="auto"`` takes each day from the sensor whose record holds it on the
grid; the days between the two records (2011-10-05..2012-07-01) belong to no sensor.

How a base URL and a grid make a file's URL: a base URL is either a sensor's tree
(``https://data.seaice.uni-bremen.de/amsr2/asi_daygrid_swath``), below which files lie at
``{grid}/netcdf/{YYYY}/{name}``, or one grid's folder of that tree (a path ending in
``/{grid}/netcdf``, as `mirror` and earlier sicube versions give it), below which files
lie at ``{YYYY}/{name}`` and whose grid is the one its path names. A path segment naming a
sensor (``amsr2`` or ``amsre``) is swapped for the day's sensor, so one base URL reaches both
trees of a server; a base URL without one serves both namings from the same folder. A plain
folder of files (``{YYYY}/{name}`` below any path, as ``sicube download --out`` writes it)
is the third layout, ``flat``: the downloader tries it where a tree has no file.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from sicube.params import DEFAULT_GRID

# The primary host first, then the older host that serves the same tree (peers added it as
# a fallback in 2025 when the primary was offline); each file is tried on them in order.
DEFAULT_BASE_URLS = ("https://data.seaice.uni-bremen.de/amsr2/asi_daygrid_swath",
                     "https://seaice.uni-bremen.de/data/amsr2/asi_daygrid_swath")
DEFAULT_BASE_URL = DEFAULT_BASE_URLS[0]
DATA_START = dt.date(2012, 7, 2)
VERSION = "v5.4"
# Tried in order when a day's file of the version before is absent (404): around
# 2018-10-28..2018-11-21 some s3125 days exist only as v5.
VERSIONS = (VERSION, "v5")
CONC_VAR = "z"
AUTO = "auto"


@dataclass(frozen=True)
class Sensor:
    """A sensor's record in the archive: its days, grids, URL tree and file naming."""

    name: str  # as on the server's path and the command line: amsr2, amsre
    label: str  # as people write it: AMSR2, AMSR-E
    first: dt.date
    last: dt.date | None  # None: still running
    grids: tuple[str, ...]
    versions: tuple[str, ...] = VERSIONS
    code: int = 0  # the value of the cube's `sensor` variable

    def file_name(self, day: dt.date, grid: str, version: str = VERSION) -> str:
        """The daily file's name: asi-AMSR2-n3125-20240401-v5.4.nc, asi-n6250-20110101-v5.4.nc."""
        prefix = "asi-AMSR2-" if self.name == "amsr2" else "asi-"
        return f"{prefix}{grid}-{day:%Y%m%d}-{version}.nc"

    def covers(self, day: dt.date, grid: str) -> bool:
        """True when the sensor's record holds `day` on `grid`."""
        return grid in self.grids and self.first <= day and (self.last is None
                                                              or day <= self.last)

    def span_text(self) -> str:
        """E.g. "AMSR-E 2002-06-01..2011-10-04 on n6250, s6250"."""
        last = self.last.isoformat() if self.last else ""
        return f"{self.label} {self.first}..{last} on {', '.join(self.grids)}"


SENSORS = {
    "amsre": Sensor("amsre", "AMSR-E", dt.date(2002, 6, 1), dt.date(2011, 10, 4),
                    ("n6250", "s6250"), code=1),
    "amsr2": Sensor("amsr2", "AMSR2", DATA_START, None,
                    ("n3125", "n6250", "s3125", "s6250"), code=2),
}
SENSOR_CHOICES = (AUTO, *SENSORS)


def check_sensor(sensor: str) -> str:
    """`sensor` when it is auto, amsr2 or amsre; ValueError naming the choices otherwise."""
    if sensor not in SENSOR_CHOICES:
        raise ValueError(f"sensor: unknown sensor {sensor!r}; choose from "
                         f"{', '.join(SENSOR_CHOICES)}")
    return sensor


def sensor_for(day: dt.date, grid: str, sensor: str = AUTO) -> Sensor | None:
    """The sensor to take `day` on `grid` from: the one named, or (auto) the one whose record
    holds the day; None when no sensor's record holds it (e.g. between AMSR-E and AMSR2)."""
    if sensor != AUTO:
        chosen = SENSORS[sensor]
        return chosen if chosen.covers(day, grid) else None
    return next((s for s in SENSORS.values() if s.covers(day, grid)), None)


def first_day(grid: str, sensor: str = AUTO) -> dt.date | None:
    """The first day any of the chosen sensors has on `grid`; None when none has the grid."""
    chosen = SENSORS.values() if sensor == AUTO else [SENSORS[sensor]]
    return min((s.first for s in chosen if grid in s.grids), default=None)


def span_problem(first: dt.date, last: dt.date, grid: str, sensor: str = AUTO) -> str | None:
    """Why the span [first, last] cannot be asked of the archive (one line), or None.

    Days before the first day of the chosen sensors on the grid, a sensor without this grid,
    and (a named sensor that has ended) days after its last day are refused.
    """
    chosen = list(SENSORS.values()) if sensor == AUTO else [SENSORS[sensor]]
    lacking = [s for s in SENSORS.values() if grid not in s.grids]
    others = "".join(f" ({s.span_text()} only)" for s in lacking)
    start = first_day(grid, sensor)
    if start is None:
        return f"grid {grid}: no {chosen[0].label} record on it{others}"
    if first < start:
        label = "/".join(s.label for s in chosen if grid in s.grids)
        return f"start {first}: the {label} record on {grid} begins {start}{others}"
    if sensor != AUTO and chosen[0].last is not None and last > chosen[0].last:
        return (f"end {last}: the {chosen[0].label} record ends {chosen[0].last} "
                f"(give --sensor auto to continue with AMSR2)")
    return None


@dataclass(frozen=True)
class Grid:
    """A polar stereographic grid of the product: its name, size and extent in metres."""

    name: str
    ny: int
    nx: int
    cell_size: float
    x_min: float  # west edge of the first cell, metres
    y_min: float  # south edge of the first cell, metres
    epsg_hughes: int  # the CRS the files declare (NSIDC polar stereographic, Hughes 1980)

    def x(self, step: int = 1) -> np.ndarray:
        """Cell-centre x coordinates in metres of the grid coarsened `step` times."""
        size = self.cell_size * step
        return self.x_min + size * (np.arange(self.nx // step) + 0.5)

    def y(self, step: int = 1) -> np.ndarray:
        """Cell-centre y coordinates in metres, ascending."""
        size = self.cell_size * step
        return self.y_min + size * (np.arange(self.ny // step) + 0.5)

    @property
    def south(self) -> bool:
        """True for the Antarctic grids."""
        return self.name.startswith("s")

    @property
    def crs(self) -> GridCRS:
        """The CRS the grid's files declare (every file seen: Hughes 1980; docs/cube-format.md)."""
        return GridCRS.from_epsg(self.epsg_hughes)

    def geotransform(self, step: int = 1) -> str:
        """GDAL's GeoTransform of the grid, north-up, as the files write it."""
        size = self.cell_size * step
        y_max = self.y_min + size * (self.ny // step)
        return f"{self.x_min:.0f} {size:g} 0 {y_max:.0f} 0 {-size:g} "

    def matches(self, x: np.ndarray, y: np.ndarray) -> bool:
        """True when cell centres `x`, `y` (ascending) are this grid, coarsened or not."""
        if x.size < 2 or y.size < 2:
            return False
        size = float(x[1] - x[0])
        step = int(round(size / self.cell_size))
        return (step >= 1 and x.size == self.nx // step and y.size == self.ny // step
                and np.allclose(x, self.x(step), rtol=0, atol=1.0)
                and np.allclose(y, self.y(step), rtol=0, atol=1.0))


GRIDS = {
    "n3125": Grid("n3125", 3584, 2432, 3125.0, -3_850_000.0, -5_350_000.0, 3411),
    "n6250": Grid("n6250", 1792, 1216, 6250.0, -3_850_000.0, -5_350_000.0, 3411),
    "s3125": Grid("s3125", 2656, 2528, 3125.0, -3_950_000.0, -3_950_000.0, 3412),
    "s6250": Grid("s6250", 1328, 1264, 6250.0, -3_950_000.0, -3_950_000.0, 3412),
}


def grid_of_coords(x: np.ndarray, y: np.ndarray) -> Grid | None:
    """The product grid (possibly coarsened) whose cell centres are `x`, `y`; None if none is."""
    return next((grid for grid in GRIDS.values() if grid.matches(x, y)), None)


_LAND_GRID = {False: "n3125", True: "s3125"}  # the shipped 3.125 km masks, one per hemisphere


@lru_cache(maxsize=2)
def shipped_land(south: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(land, x, y) of the shipped 3.125 km land mask of a hemisphere: bool (y, x), True =
    land, and its cell centres in metres (written by tools/make_land.py from
    global-land-mask). The one loader of the package's land files (mask, plot, sample)."""
    name = _LAND_GRID[bool(south)]
    grid = GRIDS[name]
    with np.load(Path(__file__).parents[1] / "data" / f"land-{name}.npz") as data:
        shape = tuple(int(n) for n in data["shape"])
        bits = np.unpackbits(data["land_bits"], count=shape[0] * shape[1])
    land = bits.reshape(shape).astype(bool)
    land.setflags(write=False)  # cached: shared by every caller
    return land, grid.x(), grid.y()

# Both namings: asi-AMSR2-{grid}-... (AMSR2) and asi-{grid}-... (AMSR-E).
_FILE_NAME = re.compile(r"(?:^|/)asi-(?P<amsr2>AMSR2-)?(?P<grid>[ns]\d{4})-(?P<day>\d{8})-"
                        r"(?P<version>v[\d.]+)\.nc$")
_GRID_FOLDER = re.compile(r"/(?P<grid>[ns](?:3125|6250))/netcdf/?$")
_SENSOR_SEGMENT = re.compile(r"/(?:amsr2|amsre)(?=/|$)")


def _sensor(day: dt.date, grid: str, sensor: Sensor | str | None) -> Sensor:
    if isinstance(sensor, Sensor):
        return sensor
    if sensor not in (None, AUTO):
        return SENSORS[sensor]
    # Naming only: a day no record holds is named as AMSR2's (its tree is the newer one).
    return sensor_for(day, grid) or SENSORS["amsr2"]


def file_name(day: dt.date, grid: str = DEFAULT_GRID, sensor: Sensor | str | None = None,
              version: str = VERSION) -> str:
    """Name of the daily file, e.g. asi-AMSR2-n3125-20240401-v5.4.nc; the sensor (default:
    the one whose record holds the day on the grid) decides the naming."""
    return _sensor(day, grid, sensor).file_name(day, grid, version)


def relative_path(day: dt.date, grid: str = DEFAULT_GRID, sensor: Sensor | str | None = None,
                  version: str = VERSION) -> str:
    """Path of the daily file below a grid folder: {YYYY}/{file name}."""
    return f"{day:%Y}/{file_name(day, grid, sensor, version)}"


def url_grid(base_url: str) -> str | None:
    """The grid a base URL is the folder of (its path ends in /{grid}/netcdf); None for a tree."""
    found = _GRID_FOLDER.search(base_url)
    return found.group("grid") if found else None


def file_url(base_url: str, day: dt.date, grid: str = DEFAULT_GRID,
             sensor: Sensor | str | None = None, version: str = VERSION,
             flat: bool = False) -> str:
    """Full URL of the daily file under `base_url` (a sensor's tree or one grid's folder; see
    the module docstring), in the tree of the day's sensor; `flat`: under a plain folder of
    files, ``{base_url}/{YYYY}/{name}``."""
    chosen = _sensor(day, grid, sensor)
    if flat:
        return f"{base_url.rstrip('/')}/{relative_path(day, grid, chosen, version)}"
    base = _SENSOR_SEGMENT.sub(f"/{chosen.name}", base_url.rstrip("/"), count=1)
    if url_grid(base) is None:
        base = f"{base}/{grid}/netcdf"
    return f"{base}/{relative_path(day, grid, chosen, version)}"


def grid_from_url(base_url: str) -> str:
    """Grid name a base URL serves (its path names it, as on the Bremen server); n3125 otherwise."""
    found = re.search(r"/([ns](?:3125|6250))(?:/|$)", base_url)
    return found.group(1) if found else DEFAULT_GRID


@dataclass(frozen=True)
class FileNameParts:
    """What a product file's name says: grid, day, version and sensor."""

    grid: str
    day: dt.date
    version: str
    sensor: str  # amsr2 or amsre


def file_name_parts(name: str) -> FileNameParts | None:
    """The parts of a product file name (either sensor's naming); None when it is not one."""
    found = _FILE_NAME.search(name)
    if not found:
        return None
    digits = found.group("day")  # 8 digits; not strptime: a decade's folder is 3,653 names
    try:
        day = dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return None
    return FileNameParts(found.group("grid"), day, found.group("version"),
                         "amsr2" if found.group("amsr2") else "amsre")


def record_problem(parts: FileNameParts, sensor: str = AUTO) -> str | None:
    """Why a file named as `parts` cannot be a day of the archive (one line), or None: its
    naming's sensor has no record of its day on its grid, or another sensor was asked."""
    named = SENSORS[parts.sensor]
    if not named.covers(parts.day, parts.grid):
        return (f"named as an {named.label} file of {parts.day} on {parts.grid}, outside "
                f"the {named.span_text()} record")
    if sensor != AUTO and parts.sensor != sensor:
        return f"an {named.label} file, and --sensor {sensor} was asked"
    return None


def parse_file_name(name: str) -> tuple[str, dt.date] | None:
    """Return (grid, day) of a product file name (AMSR2's or AMSR-E's), or None."""
    parts = file_name_parts(name)
    return (parts.grid, parts.day) if parts else None


# --- the CRS a file declares ------------------------------------------------------------------

# The polar stereographic CRSs the product is known in: Hughes 1980 (what the files declare)
# and their WGS84 twins. A file's CRS is matched against them by parameters, so a WKT that
# names nothing (GMT and GDAL often write "unknown") still gets its EPSG code.
KNOWN_EPSG = (3411, 3412, 3413, 3976)
_PROJECTION_KEYS = ("grid_mapping_name", "standard_parallel",
                    "straight_vertical_longitude_from_pole", "false_easting", "false_northing")
_ELLIPSOID_KEYS = ("semi_major_axis", "inverse_flattening")


def _cf_of(crs) -> dict:
    return {k: v for k, v in crs.to_cf().items() if v is not None}


def _key(cf: Mapping, names: tuple[str, ...]) -> tuple:
    """Comparable values of `names` (numbers rounded to millimetres / 1e-6 degrees)."""
    out = []
    for name in names:
        value = cf.get(name)
        if isinstance(value, (list, tuple, np.ndarray)):
            value = tuple(np.round(np.asarray(value, float), 6))
        elif isinstance(value, (int, float, np.number)):
            value = round(float(value), 6)
        out.append(value)
    return tuple(out)


@lru_cache(maxsize=1)
def _known() -> dict[int, tuple[tuple, tuple, str]]:
    from pyproj import CRS

    known = {}
    for code in KNOWN_EPSG:
        crs = CRS.from_epsg(code)
        cf = _cf_of(crs)
        known[code] = (_key(cf, _PROJECTION_KEYS), _key(cf, _ELLIPSOID_KEYS), crs.ellipsoid.name)
    return known


@dataclass(frozen=True)
class GridCRS:
    """The coordinate reference system of a daily file or a cube, as its grid mapping declares.

    `epsg` is the code when the CRS is a known one (3411/3412 Hughes 1980, 3413/3976 WGS84,
    or anything pyproj identifies), else None; `wkt` always describes it.
    """

    wkt: str
    epsg: int | None
    south: bool
    ellipsoid: str

    @classmethod
    def from_epsg(cls, code: int) -> GridCRS:
        """The CRS of an EPSG code."""
        from pyproj import CRS

        return cls.from_pyproj(CRS.from_epsg(int(code)))

    @classmethod
    def from_pyproj(cls, crs) -> GridCRS:
        """The CRS of a pyproj CRS, identified by its parameters."""
        cf = _cf_of(crs)
        projection, ellipsoid = _key(cf, _PROJECTION_KEYS), _key(cf, _ELLIPSOID_KEYS)
        epsg, name = None, crs.ellipsoid.name if crs.ellipsoid else "unknown"
        for code, (known_projection, known_ellipsoid, known_name) in _known().items():
            if ellipsoid == known_ellipsoid:
                name = known_name  # "unknown" in a bare WKT; the parameters say Hughes or WGS84
                if projection == known_projection:
                    epsg = code
        if epsg is None:
            epsg = crs.to_epsg(min_confidence=90)
        lat0 = cf.get("latitude_of_projection_origin", cf.get("standard_parallel", 0.0))
        south = float(np.atleast_1d(lat0)[0]) < 0
        return cls(wkt=crs.to_wkt(), epsg=epsg, south=south, ellipsoid=name)

    @classmethod
    def from_attrs(cls, attrs: Mapping) -> GridCRS:
        """The CRS a grid-mapping variable declares: its WKT (`crs_wkt`, `spatial_ref`),
        else `epsg_code`, else its CF parameters. ValueError when none of them is usable.

        Parsed once per distinct attribute set: every file of an archive declares the same
        one, and pyproj spent 0.24 s on each file's CF parameters (`CRS.from_cf`)."""
        key = _attrs_key(attrs)
        if key is None:  # a value we cannot compare cheaply: parse it as it comes
            return cls._parse_attrs(attrs)
        with _ATTRS_LOCK:  # held while parsing: files arriving together wait for one parse
            crs = _ATTRS_CRS.get(key)
            if crs is None:
                crs = cls._parse_attrs(attrs)
                if len(_ATTRS_CRS) >= _ATTRS_CACHE_SIZE:
                    _ATTRS_CRS.clear()  # many distinct sets is unusual: start over
                _ATTRS_CRS[key] = crs
        return crs

    @classmethod
    def _parse_attrs(cls, attrs: Mapping) -> GridCRS:
        from pyproj import CRS
        from pyproj.exceptions import CRSError

        tried = []
        for name in ("crs_wkt", "spatial_ref"):
            if attrs.get(name):
                try:
                    return cls.from_pyproj(CRS.from_wkt(str(attrs[name])))
                except CRSError as err:
                    tried.append(f"{name}: {err}")
        code = str(attrs.get("epsg_code", "")).split(":")[-1]
        if code.isdigit():
            return cls.from_epsg(int(code))
        if attrs.get("grid_mapping_name"):
            try:
                return cls.from_pyproj(CRS.from_cf(dict(attrs)))
            except CRSError as err:
                tried.append(f"CF parameters: {err}")
        raise ValueError("no usable CRS in the grid mapping" + (f" ({'; '.join(tried)})"
                                                                if tried else ""))

    @property
    def name(self) -> str:
        """Short text for reports: EPSG:3411 (Hughes 1980), or the projection's name."""
        from pyproj import CRS

        if self.epsg is not None:
            return f"EPSG:{self.epsg} ({self.ellipsoid})"
        return f"{CRS.from_wkt(self.wkt).name} ({self.ellipsoid})"

    def to_pyproj(self):
        """The pyproj CRS."""
        from pyproj import CRS

        return CRS.from_epsg(self.epsg) if self.epsg is not None else CRS.from_wkt(self.wkt)

    def projection(self) -> tuple:
        """The projection's parameters without the ellipsoid (what `same_projection` compares)."""
        return _projection_of(self.wkt)

    def same_projection(self, other: GridCRS) -> bool:
        """True when both are the same projection and hemisphere; the ellipsoid may differ
        (Hughes 1980 against WGS84 moves a cell by metres, not a grid cell: ingest, record)."""
        return self.south == other.south and self.projection() == other.projection()

    def grid_mapping_attrs(self) -> dict:
        """CF attributes of a `polar_stereographic` variable declaring this CRS."""
        return dict(_grid_mapping_attrs(self.epsg, None if self.epsg is not None else self.wkt))


# GridCRS.from_attrs's parses by attribute set (`_attrs_key`); GridCRS is frozen, so the
# threads validating files at once share one.
_ATTRS_CRS: dict[tuple, GridCRS] = {}
_ATTRS_LOCK = threading.Lock()
_ATTRS_CACHE_SIZE = 64


def forget_parsed_crs() -> None:
    """Forget the CRSs `GridCRS.from_attrs` parsed (a benchmark times a first parse)."""
    with _ATTRS_LOCK:
        _ATTRS_CRS.clear()


def _attrs_key(attrs: Mapping) -> tuple | None:
    """`attrs` as a hashable key that is equal only for equal values (arrays by dtype, shape
    and values); None when a value is neither text, a number nor an array of them."""
    items = []
    for name, value in attrs.items():
        if isinstance(value, (list, tuple)):
            value = np.asarray(value)
        if isinstance(value, np.ndarray):
            if value.dtype.kind not in "biufSU":
                return None
            value = ("array", value.dtype.str, value.shape, tuple(value.ravel().tolist()))
        elif isinstance(value, np.generic):
            value = (value.dtype.str, value.item())
        elif not isinstance(value, (str, bytes, int, float)):
            return None
        items.append((str(name), value))
    return tuple(sorted(items))


@lru_cache(maxsize=16)
def _projection_of(wkt: str) -> tuple:
    """Parsed once per WKT: every file of a build declares the same one."""
    from pyproj import CRS

    return _key(_cf_of(CRS.from_wkt(wkt)), _PROJECTION_KEYS)


@lru_cache(maxsize=8)
def _grid_mapping_attrs(epsg: int | None, wkt: str | None) -> tuple:
    from pyproj import CRS

    crs = CRS.from_epsg(epsg) if epsg is not None else CRS.from_wkt(wkt)
    attrs = _cf_of(crs)
    if attrs.get("grid_mapping_name") == "polar_stereographic":
        # pyproj leaves it out for variant B; CF readers (and GDAL's files) expect it.
        attrs.setdefault("latitude_of_projection_origin",
                         -90.0 if float(attrs.get("standard_parallel", 90.0)) < 0 else 90.0)
    attrs.setdefault("long_name", f"coordinate reference system: {crs.name}")
    attrs["spatial_ref"] = attrs["crs_wkt"]  # what GDAL and rioxarray look for
    if epsg is not None:
        attrs["epsg_code"] = f"EPSG:{epsg}"
    return tuple(attrs.items())


def grid_mapping_attrs(crs: GridCRS | int) -> dict:
    """CF grid-mapping attributes (with WKT) for a CRS or an EPSG code."""
    crs = crs if isinstance(crs, GridCRS) else GridCRS.from_epsg(crs)
    return crs.grid_mapping_attrs()


def epsg_from_attrs(attrs: Mapping) -> int | None:
    """EPSG code a grid-mapping variable's attributes declare (code, WKT or CF), or None."""
    try:
        return GridCRS.from_attrs(attrs).epsg
    except ValueError:
        return None
