"""A realistic offline AMSR2 archive: daily files laid out and structured like Bremen's.

No machine here reaches the internet, so tests, the demo and the benchmarks run on files
this module writes. They carry the real product's structure (`z`, `x`, `y`,
`polar_stereographic`, float32 percent, NaN fill, ascending y, netCDF-4 with zlib, year
folders) and content that looks like the Arctic: real coastlines from `global-land-mask`
projected with pyproj, a seasonal ice pack whose marginal ice zone moves from day to day,
the pole hole, swath gaps at lower latitudes and whole missing days.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from sicube import products
from sicube.cache import cache_dir
from sicube.dates import DateLike, day_range, parse_date, parse_span
from sicube.errors import BadInput

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


@dataclass(frozen=True)
class _Geometry:
    x: np.ndarray
    y: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    land: np.ndarray


@lru_cache(maxsize=4)
def _geometry(grid_name: str, step: int) -> _Geometry:
    """Coordinates, latitude, longitude and land of the grid, coarsened by `step`."""
    from pyproj import Transformer

    grid = products.GRIDS[grid_name]
    x, y = grid.x(step), grid.y(step)
    xx, yy = np.meshgrid(x, y)
    to_geo = Transformer.from_crs(grid.epsg_hughes, 4326, always_xy=True)
    lon, lat = to_geo.transform(xx, yy)
    lon, lat = lon.astype(np.float32), lat.astype(np.float32)
    return _Geometry(x, y, lat, lon, _land(grid_name, step, lat, lon))


def _land(grid_name: str, step: int, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Land cells of the grid from global-land-mask, cached on disk (loading it costs ~1 GB)."""
    path = cache_dir(f"land-{grid_name}-step{step}.npy")
    if path.exists():
        land = np.load(path)
        if land.shape == lat.shape:
            return land
    from global_land_mask import globe

    land = globe.is_land(lat.astype(np.float64), lon.astype(np.float64))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, land)
        os.replace(tmp, path)
    except OSError:  # a read-only home only costs the next run the same work
        pass
    return land


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


def sample_day(day: dt.date, *, step: int = 8, seed: int = 0, grid: str = "n3125",
               start: dt.date | None = None) -> np.ndarray:
    """One day's sea-ice concentration in percent (float32, NaN = missing) on the grid.

    `start` anchors the drift of the ice edge so a span is continuous day to day.
    """
    geo = _geometry(grid, step)
    day_index = (day - (start or products.DATA_START)).days
    rng = np.random.default_rng(seed)
    edge_waves = _waves(rng, 6, (800.0, 3000.0))
    lead_waves = _waves(rng, 8, (60.0, 300.0))

    # Seasonal cycle: most ice in mid-March, least in mid-September.
    season = np.cos(2 * np.pi * (day.timetuple().tm_yday - 75) / 365.25)
    # Warm Atlantic water keeps the edge far north around Svalbard and the Barents Sea.
    atlantic = np.cos(np.radians(geo.lon - 30.0))
    edge = 74.0 - 6.0 * season + 3.0 * atlantic + 2.5 * _noise(edge_waves, geo.x, geo.y, day_index)
    ramp = np.clip((geo.lat - edge) / MIZ_WIDTH_DEG, 0.0, 1.0)
    leads = 6.0 * (1.0 + _noise(lead_waves, geo.x, geo.y, day_index))
    conc = np.clip(100.0 * ramp**0.7 - leads * ramp, 0.0, 100.0).astype(np.float32)

    missing = geo.land | (geo.lat >= POLE_HOLE_LAT)
    # Gaps between swaths: wedges along meridians that widen equatorward and shift daily.
    width = np.clip((SWATH_GAP_LAT - geo.lat) / 60.0, 0.0, 0.2)
    orbit = ((geo.lon + 7.3 * day_index) % SWATH_SPACING_DEG) / SWATH_SPACING_DEG
    missing |= orbit < width
    conc[missing] = np.nan
    return conc


def write_day_file(path: Path, z: np.ndarray, day: dt.date, *, step: int = 1,
                   grid: str = "n3125", storage: dict | None = None) -> Path:
    """Write one daily file in the Bremen structure, atomically (temp file, then rename).

    `storage`: how `z` is stored, as netCDF4 `createVariable` arguments (default: float32,
    zlib level 4 with shuffle, netCDF's default chunks); tests vary it.
    """
    import netCDF4

    geo = _geometry(grid, step)
    epsg = products.GRIDS[grid].epsg(day)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    with netCDF4.Dataset(tmp, "w", format="NETCDF4") as nc:
        nc.createDimension("x", geo.x.size)
        nc.createDimension("y", geo.y.size)
        gm = nc.createVariable("polar_stereographic", "i4")
        gm.setncatts(products.grid_mapping_attrs(epsg))
        for name, values, axis in (("x", geo.x, "X"), ("y", geo.y, "Y")):
            var = nc.createVariable(name, "f8", (name,))
            var[:] = values
            var.setncatts({
                "standard_name": f"projection_{name}_coordinate",
                "long_name": f"{name}-coordinate in polar stereographic projection",
                "units": "m", "axis": axis,
            })
        layout = dict(storage or {"zlib": True, "complevel": 4, "shuffle": True})
        z_var = nc.createVariable("z", layout.pop("datatype", "f4"), ("y", "x"),
                                  fill_value=np.float32(np.nan), **layout)
        z_var.setncatts({
            "long_name": "sea ice concentration", "units": "%",
            "grid_mapping": "polar_stereographic",
        })
        z_var[:] = z
        nc.setncatts({
            "title": f"AMSR2 ASI sea ice concentration {day:%Y-%m-%d} (sicube sample, synthetic)",
            "source": "sicube.sample: synthetic data in the structure of Bremen asi_daygrid_swath",
            "Conventions": "CF-1.8",
        })
    os.replace(tmp, path)
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
    grid: str = "n3125",
    land_value: float | None = None,
    progress: bool = False,
) -> Archive:
    """Write a sample archive for every day of [start, end] under `out_dir/{YYYY}/`.

    Parameters
    ----------
    step : coarsening of the 3.125 km grid; 1 is the full 3584 x 2432 grid.
    missing_days : days with no file (a 404 on the mirror); None draws `missing_rate`
        of the days at random (never the first or last day), [] means none.
    seed : the same seed gives the same archive.
    land_value : write this value on land instead of NaN, like derived products that
        flag land with values above 100.
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
        if land_value is not None:
            z[_geometry(grid, step).land] = land_value
        path = root / products.relative_path(day, grid)
        archive.files[day] = write_day_file(path, z, day, step=step, grid=grid)
    archive.shape = _geometry(grid, step).lat.shape
    log.info("wrote %d files, %d missing days, grid %s", len(archive.files),
             len(archive.missing), archive.shape)
    return archive
