"""A realistic offline AMSR2 archive: daily files laid out and structured like Bremen's.

No machine here reaches the internet, so tests, the demo and the benchmarks run on files
this module writes. They are the real files' layout attribute for attribute
(docs/cube-format.md, "Source files": GDAL's netCDF-4 copy of a GMT grid; `z` float32 in
one-row chunks, deflate 1 + shuffle, y ascending, a `polar_stereographic` char variable with
CF parameters, WKT and a north-up GeoTransform, no `epsg_code`, year folders), on any of the
four grids, with content that looks like the Arctic or the Southern Ocean: the coastlines
shipped in `sicube/data` (global-land-mask projected with pyproj), a seasonal ice pack whose
marginal ice zone moves from day to day, the pole hole, swath gaps at lower latitudes and
whole missing days. Other storage layouts (`STORAGE`) exist to test that the reader copes
with them.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from sicube.archive import products
from sicube.datacube.store import atomic_file
from sicube.dates import DateLike, count_text, day_range, parse_date, parse_span
from sicube.errors import BadInput
from sicube.params import DEFAULT_GRID

log = logging.getLogger(__name__)

POLE_HOLE_LAT = 89.3  # AMSR2 sees nothing north of about 89.4 N
SWATH_GAP_LAT = 70.0  # orbits converge poleward of this; gaps open equatorward
SWATH_SPACING_DEG = 25.0  # longitude spacing of successive ascending passes
MIZ_WIDTH_DEG = 2.5  # width of the marginal ice zone, degrees of latitude


@dataclass
class Archive:
    """What `write_archive` wrote: the root, the file of every present day, the missing days."""

    root: Path
    files: dict[dt.date, Path] = field(default_factory=dict)
    missing: list[dt.date] = field(default_factory=list)
    shape: tuple[int, int] = (0, 0)

    @property
    def days(self) -> list[dt.date]:
        """Every calendar day of the span, present or missing."""
        return sorted([*self.files, *self.missing])

    def text(self) -> list[str]:
        """What was written, as `sicube sample` prints it: the files, then the missing days."""
        ny, nx = self.shape
        lines = [f"wrote {count_text(len(self.files), 'daily file')} ({ny} x {nx}) under "
                 f"{self.root}"]
        if self.missing:
            lines.append("missing days: " + ", ".join(f"{d:%Y%m%d}" for d in self.missing))
        return lines


@dataclass(frozen=True)
class Geometry:
    """A sample grid's cell-centre coordinates, latitude, longitude and land (True)."""

    x: np.ndarray
    y: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    land: np.ndarray


def lat_lon(grid_name: str, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Latitude and longitude (float64) of the cell centres of the grid coarsened by `step`."""
    from pyproj import Transformer

    grid = products.GRIDS[grid_name]
    xx, yy = np.meshgrid(grid.x(step), grid.y(step))
    to_geo = Transformer.from_crs(grid.epsg_hughes, 4326, always_xy=True)
    lon, lat = to_geo.transform(xx, yy)
    return lat, lon


@lru_cache(maxsize=4)
def geometry(grid_name: str, step: int) -> Geometry:
    """Coordinates, latitude, longitude and land of the grid, coarsened by `step`."""
    grid = products.GRIDS[grid_name]
    lat, lon = lat_lon(grid_name, step)
    return Geometry(grid.x(step), grid.y(step), lat.astype(np.float32),
                     lon.astype(np.float32), _land(grid, step))


def _land(grid: products.Grid, step: int) -> np.ndarray:
    """Land cells of the grid from the shipped 3.125 km mask of its hemisphere (written by
    tools/make_land.py from global-land-mask): the fine cell at each coarse cell's centre."""
    fine, fine_x, _ = products.shipped_land(grid.south)
    factor = step * int(round(grid.cell_size / float(fine_x[1] - fine_x[0])))
    ny, nx = grid.ny // step, grid.nx // step
    return np.ascontiguousarray(fine[factor // 2::factor, factor // 2::factor][:ny, :nx])


def _waves(rng: np.random.Generator, count: int, scale_km: tuple[float, float]) -> np.ndarray:
    """Random plane waves (kx, ky, phase, speed) for a smooth, drifting noise field."""
    wavelength = rng.uniform(*scale_km, count) * 1000.0
    angle = rng.uniform(0, 2 * np.pi, count)
    k = 2 * np.pi / wavelength
    return np.stack(
        [k * np.cos(angle), k * np.sin(angle), rng.uniform(0, 2 * np.pi, count),
         rng.uniform(0.05, 0.25, count)],
        axis=1,
    )


def _noise(waves: np.ndarray, x: np.ndarray, y: np.ndarray, day_index: int) -> np.ndarray:
    """A smooth field in [-1, 1] that drifts a little every day."""
    field_ = np.zeros((y.size, x.size), np.float32)
    for kx, ky, phase, speed in waves:
        # Separable: cos(a + b) = cos a cos b - sin a sin b, cheap on a full grid.
        ax = (kx * x).astype(np.float32)
        ay = (ky * y + phase + speed * day_index).astype(np.float32)
        field_ += np.outer(np.cos(ay), np.cos(ax)) - np.outer(np.sin(ay), np.sin(ax))
    return field_ / len(waves)


def sample_day(day: dt.date, *, step: int = 8, seed: int = 0, grid: str = DEFAULT_GRID,
               start: dt.date | None = None) -> np.ndarray:
    """One day's sea-ice concentration in percent (float32, NaN = missing) on the grid.

    `start` anchors the drift of the ice edge so a span is continuous day to day.
    """
    geo = geometry(grid, step)
    day_index = (day - (start or products.DATA_START)).days
    rng = np.random.default_rng(seed)
    edge_waves = _waves(rng, 6, (800.0, 3000.0))
    lead_waves = _waves(rng, 8, (60.0, 300.0))

    doy = day.timetuple().tm_yday
    if products.GRIDS[grid].south:
        # Most ice in mid-September, least in late February; the Weddell and Ross gyres
        # carry the edge furthest north.
        season = np.cos(2 * np.pi * (doy - 258) / 365.25)
        gyres = np.cos(np.radians(2.0 * (geo.lon + 45.0)))
        edge = (62.0 - 4.0 * season - 1.5 * gyres
                + 2.0 * _noise(edge_waves, geo.x, geo.y, day_index))
    else:
        # Most ice in mid-March, least in mid-September; warm Atlantic water keeps the edge
        # far north around Svalbard and the Barents Sea.
        season = np.cos(2 * np.pi * (doy - 75) / 365.25)
        atlantic = np.cos(np.radians(geo.lon - 30.0))
        edge = (74.0 - 6.0 * season + 3.0 * atlantic
                + 2.5 * _noise(edge_waves, geo.x, geo.y, day_index))
    lat = np.abs(geo.lat)  # distance from the equator, either hemisphere
    ramp = np.clip((lat - edge) / MIZ_WIDTH_DEG, 0.0, 1.0)
    leads = 6.0 * (1.0 + _noise(lead_waves, geo.x, geo.y, day_index))
    conc = np.clip(100.0 * ramp**0.7 - leads * ramp, 0.0, 100.0).astype(np.float32)

    missing = geo.land | (lat >= POLE_HOLE_LAT)
    # Gaps between swaths: wedges along meridians that widen equatorward and shift daily.
    width = np.clip((SWATH_GAP_LAT - lat) / 60.0, 0.0, 0.2)
    orbit = ((geo.lon + 7.3 * day_index) % SWATH_SPACING_DEG) / SWATH_SPACING_DEG
    missing |= orbit < width
    conc[missing] = np.nan
    return conc


# How `z` is stored: netCDF4 `createVariable` arguments, plus "chunksizes": "rows" (one row
# per chunk), "format" (of the file), "y_descending" (rows north to south) and, for packed
# integers, "datatype", "scale_factor", "fill_value". "gdal" is the real archive's layout;
# the others are layouts a reader must cope with (derived products, other writers).
STORAGE: dict[str, dict] = {
    "gdal": {"zlib": True, "complevel": 1, "shuffle": True, "chunksizes": "rows"},
    "netcdf-default": {"zlib": True, "complevel": 4, "shuffle": True},
    "contiguous": {"contiguous": True},
    "netcdf3": {"format": "NETCDF3_CLASSIC"},
    "y-descending": {"zlib": True, "complevel": 1, "shuffle": True, "chunksizes": "rows",
                     "y_descending": True},
    "int16": {"datatype": "i2", "scale_factor": 0.01, "fill_value": -32768,
              "zlib": True, "complevel": 1, "shuffle": True, "chunksizes": "rows"},
}
# What the real files' attributes say about their making (docs/cube-format.md, "Source
# files"); `info` says these are not Bremen's data.
_GDAL = "GDAL 2.2.3, released 2017/11/20"
_GMT = "5.4.3 (r20000) [64-bit]"


def _gdal_wkt(epsg: int) -> str:
    """The CRS as GDAL writes it (WKT1), without authority codes: GMT grids carry only
    parameters, so the reader must identify the CRS from them."""
    from pyproj import CRS

    return re.sub(r',AUTHORITY\["EPSG","\d+"\]', "", CRS.from_epsg(epsg).to_wkt("WKT1_GDAL"))


# How the grid mapping declares the CRS: "gdal" as GDAL's netCDF driver writes it (the real
# archive's), "cf" with the CF parameters alone (what a netCDF4 or xarray writer without
# GDAL writes; the reader then identifies the CRS from the parameters).
GRID_MAPPINGS = ("gdal", "cf")


def _grid_mapping(grid: products.Grid, step: int, kind: str = "gdal") -> dict:
    """`polar_stereographic` attributes: CF parameters, and for "gdal" the WKT twice and a
    north-up GeoTransform; never an epsg_code."""
    cf = grid.crs.grid_mapping_attrs()
    attrs = {name: float(cf[name]) for name in (
        "straight_vertical_longitude_from_pole", "latitude_of_projection_origin",
        "standard_parallel", "false_easting", "false_northing", "semi_major_axis",
        "inverse_flattening", "longitude_of_prime_meridian")}
    attrs = {"grid_mapping_name": "polar_stereographic", **attrs, "long_name": "CRS definition"}
    if kind == "cf":
        return attrs
    wkt = _gdal_wkt(grid.epsg_hughes)
    return {**attrs, "spatial_ref": wkt, "crs_wkt": wkt, "GeoTransform": grid.geotransform(step)}


def write_day_file(path: Path, z: np.ndarray, day: dt.date, *, step: int = 1,
                   grid: str = DEFAULT_GRID, storage: dict | str | None = None,
                   grid_mapping: str = "gdal") -> Path:
    """Write one daily file in the real archive's layout, atomically (temp file, rename).

    `z` is south to north (y ascending). `storage` picks another layout: a name in `STORAGE`
    or its own dict of the same keys (None: "gdal", the real one); tests vary it.
    `grid_mapping` is how the CRS is declared (`GRID_MAPPINGS`: "gdal", the real one, or "cf").
    """
    import netCDF4

    if grid_mapping not in GRID_MAPPINGS:
        raise BadInput(f"grid_mapping: unknown {grid_mapping!r}; choose from "
                       f"{', '.join(GRID_MAPPINGS)}")

    geo, spec = geometry(grid, step), products.GRIDS[grid]
    layout = dict(STORAGE[storage] if isinstance(storage, str) else storage or STORAGE["gdal"])
    file_format = layout.pop("format", "NETCDF4")
    flip = layout.pop("y_descending", False)
    datatype = layout.pop("datatype", "f4")
    scale = {k: layout.pop(k) for k in ("scale_factor", "add_offset") if k in layout}
    fill = layout.pop("fill_value", np.float32(np.nan))
    if layout.get("chunksizes") == "rows":
        layout["chunksizes"] = (1, geo.x.size)  # GDAL's default: one row per chunk
    y, values = (geo.y[::-1], z[::-1]) if flip else (geo.y, z)

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp, netCDF4.Dataset(tmp, "w", format=file_format) as nc:
        nc.createDimension("x", geo.x.size)
        nc.createDimension("y", geo.y.size)
        gm = nc.createVariable("polar_stereographic", "S1")
        gm.setncatts(_grid_mapping(spec, step, grid_mapping))
        for name, coord in (("x", geo.x), ("y", y)):
            var = nc.createVariable(name, "f8", (name,))
            var[:] = coord
            var.setncatts({"standard_name": f"projection_{name}_coordinate",
                           "long_name": f"{name} coordinate of projection", "units": "m"})
        z_var = nc.createVariable("z", datatype, ("y", "x"), fill_value=fill, **layout)
        finite = values[np.isfinite(values)]
        z_var.setncatts({
            "long_name": "z",
            "actual_range": np.array([finite.min(), finite.max()] if finite.size else [0, 0],
                                     np.float64),
            "grid_mapping": "polar_stereographic", **scale,
        })
        if scale:  # packed: netCDF4 scales and writes the fill value where masked
            values = np.ma.masked_array(np.nan_to_num(values), mask=np.isnan(values))
        z_var[:] = values
        nc.setncatts({
            "Conventions": "CF-1.5",
            "title": "Produced by grdmath",
            "GDAL": _GDAL,
            "GMT_version": _GMT,
            "history": (f"{day:%a %b %d} 06:00:00 {day:%Y}: GDAL CreateCopy( "
                        f"{products.file_name(day, grid)}, ... )\n"
                        f"grdmath {products.file_name(day, grid)[:-3]}.grd FLIPUD = "
                        f"{products.file_name(day, grid)}"),
            "author": "sicube.archive.synthetic (in the layout of University of Bremen, IUP)",
            "info": ("synthetic data from sicube.archive.synthetic in the structure of Bremen "
                     "asi_daygrid_swath v5.4; not a measurement"),
        })
    return path


def write_archive(
    out_dir: str | os.PathLike,
    start: DateLike,
    end: DateLike,
    *,
    step: int = 8,
    missing_days: list[DateLike] | None = None,
    missing_rate: float = 0.05,
    seed: int = 0,
    grid: str = DEFAULT_GRID,
    land_value: float | None = None,
    storage: dict | str | None = None,
    grid_mapping: str = "gdal",
    zero_days: list[DateLike] = (),
    sparse_days: list[DateLike] = (),
    sparse_share: float = 1 / 3,
    progress: bool = False,
) -> Archive:
    """Write a sample archive for every day of [start, end] under `out_dir/{YYYY}/`.

    Parameters
    ----------
    step : coarsening of the grid; 1 is the full grid (n3125: 3584 x 2432).
    missing_days : days with no file (a 404 on the mirror); None draws `missing_rate`
        of the days at random (never the first or last day), [] means none.
    seed : the same seed gives the same archive.
    grid : n3125, n6250, s3125 or s6250 (its coastlines, hemisphere and CRS).
        Files are named as the sensor whose record holds the day names them
        (`products.file_name`): AMSR-E's ``asi-{grid}-...`` for n6250/s6250 days up to
        2011-10-04, AMSR2's ``asi-AMSR2-{grid}-...`` otherwise; one folder can hold both.
    land_value : write this value on land instead of NaN, like derived products that
        flag land with values above 100.
    storage : how `z` is stored (`write_day_file`); None is the real archive's layout.
    grid_mapping : how the CRS is declared (`write_day_file`): "gdal" (the real archive's
        WKT and CF parameters) or "cf" (CF parameters alone).
    zero_days : days whose file is written but every observed value is 0 (a broken
        retrieval that looks valid: the suspicious days of `sicube.pipeline.quality`).
    sparse_days : days observed only in bands of rows (lost swaths) making up
        `sparse_share` of the grid: about that share of their usual observations.
    """
    first, last = parse_span(start, end)
    if grid not in products.GRIDS:
        raise BadInput(f"grid: unknown grid {grid!r}; choose from {', '.join(products.GRIDS)}")
    if not isinstance(step, int) or step < 1:
        raise BadInput(f"step: must be a positive integer, got {step!r}")
    days = list(day_range(first, last))
    if missing_days is None:
        rng = np.random.default_rng(seed + 1)
        inner = days[1:-1]
        count = int(round(missing_rate * len(inner)))
        missing = set(rng.choice(inner, size=count, replace=False)) if count else set()
    else:
        missing = {parse_date(d, "missing_days") for d in missing_days}

    zeros = {parse_date(d, "zero_days") for d in zero_days}
    sparse = {parse_date(d, "sparse_days") for d in sparse_days}
    root = Path(out_dir)
    archive = Archive(root=root)
    iterator = days
    if progress:
        from tqdm import tqdm

        iterator = tqdm(days, desc="sample", unit="day")
    for day in iterator:
        if day in missing:
            archive.missing.append(day)
            continue
        z = sample_day(day, step=step, seed=seed, grid=grid, start=first)
        if day in zeros:
            z[~np.isnan(z)] = 0.0
        if day in sparse:
            band = np.arange(z.shape[0]) // 4
            kept = np.floor(band * sparse_share) != np.floor((band - 1) * sparse_share)
            z[~kept] = np.nan
        if land_value is not None:
            z[geometry(grid, step).land] = land_value
        path = root / products.relative_path(day, grid)
        archive.files[day] = write_day_file(path, z, day, step=step, grid=grid,
                                             storage=storage, grid_mapping=grid_mapping)
    archive.shape = geometry(grid, step).lat.shape
    log.info("wrote %d files, %d missing days, grid %s", len(archive.files),
             len(archive.missing), archive.shape)
    return archive
