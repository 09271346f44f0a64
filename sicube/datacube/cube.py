"""The cube's layout: variable names, dimensions, CF attributes, chunking; and opening a cube.

Every other module reads these names from here. The builder writes a store from
`template`; readers call `open_cube` (or `open_group` for the bare Zarr group), which refuse
anything that is not a sicube cube, and a cube whose build has not finished unless told.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from sicube._version import __version__
from sicube.archive import products
from sicube.dates import to_datetime64
from sicube.errors import BadInput

if TYPE_CHECKING:  # xarray loads when a cube is made or opened: `sicube.kernels.fill` imports this
    import xarray as xr

RAW = "sea_ice_conc_raw"
CONC = "sea_ice_conc"
FLAG = "fill_flag"
OBSERVED = "day_observed"
SENSOR = "sensor"  # (time,) uint8: which sensor each observed day came from
LAND = "land_mask"
NAN_RATIO = "nan_ratio"
POLE_HOLE = "pole_hole"
CELL_AREA = "cell_area"  # (y, x) float64 m²: each cell's area on the CRS's ellipsoid
EXTENT = "sea_ice_extent"  # (time,) float64 km², from sea_ice_conc (`sicube.kernels.area`)
AREA = "sea_ice_area"  # (time,) float64 km²
GRID_MAPPING = "polar_stereographic"
MARKER = "sicube_cube_format"  # group attribute that says "this store is a sicube cube"
# 1: sicube 0.1 (records as JSON values); 2: records as JSON strings, read and written
# through `sicube.datacube.record.CubeRecord`. Readers take any version up to this one.
FORMAT_VERSION = 2
# Group attributes on a cube's life: its state ("building", "complete" or "failed: reason")
# and the command that finishes it (so that every refusal can say what to run).
STATUS = "sicube_status"
FINISH = "sicube_finish_command"
BUILDING, COMPLETE, FAILED = "building", "complete", "failed"
# An update (new days, late files) is under way or was interrupted: every day up to the
# `complete_through` day of the build record is ingested and filled, and a day is marked
# observed only once it is, so readers may go on reading.
UPDATING = "updating"
READABLE = (COMPLETE, UPDATING)
LAST_ERROR = "sicube_last_error"  # why an update stopped (the cube stays `updating`)
# Group attributes kept current after every ingested time chunk (so that `info` can tell
# observed, missing (404 / not in the folder), failed (with reason) and not-yet-ingested days
# apart at any moment): {YYYYMMDD: {"name", "sha256", ...}}, [YYYYMMDD], {YYYYMMDD: reason},
# and where the days came from (an absolute folder, or the base URL).
SOURCE_FILES = "source_files"
MISSING_DAYS = "missing_days"
FAILED_DAYS = "failed_days"
SOURCE_DIRECTORY = "source_directory"
SOURCE_URL = "source_base_url"
# Per-day statistics of the raw field over non-land cells (`sicube.pipeline.quality`), the day's
# quality flags, and the suspicious days as a group attribute {YYYYMMDD: reason}.
OBS_FRACTION = "obs_fraction"
ZERO_FRACTION = "zero_fraction"
MEAN_CONC = "mean_conc"
EXTENT_RAW = "extent_raw"
DAY_QUALITY = "day_quality"
DAY_STATS = (OBS_FRACTION, ZERO_FRACTION, MEAN_CONC, EXTENT_RAW)
DAY_VARS = (*DAY_STATS, DAY_QUALITY)
SUSPICIOUS_DAYS = "suspicious_days"
# The builder's own progress record (`sicube.pipeline.plan.BuildState`, the day lists apart), and
# where the days came from besides SOURCE_URL (the first host): every host in order, the
# grid and the sensor choice asked of them (so `update` asks the same).
BUILD_STATE = "sicube_build"
SOURCE_URLS = "source_base_urls"
SOURCE_GRID = "source_grid"
SOURCE_SENSOR = "source_sensor"
# Provenance written when a build or update finishes.
VERSION = "sicube_version"
FILL_PARAMETERS = "fill_parameters"
MASK_THRESHOLD_ATTR = "mask_threshold"  # the key; the default value is params.MASK_THRESHOLD
MASK_SOURCE = "mask_source"
MASK_SPAN = "mask_span"
SUSPICIOUS_POLICY = "suspicious_policy"
QUALITY_RULES = "quality_rules"
BUILD_TIME = "build_time"
HISTORY = "history"
# The group attributes above that hold records (dicts, lists: the day lists, the fill and
# quality parameters, the hosts) are stored as JSON strings, so that every attribute is
# netCDF-legal and `xarray.Dataset.to_netcdf` takes a cube as it opens; cubes of earlier
# releases hold them as JSON values. Every key above is read and written through
# `sicube.datacube.record.CubeRecord`; `record_attr` decodes one of them.


def record_attr(source, name: str, default=None):
    """The record group attribute `name` decoded (a dict or a list), whether stored as a JSON
    string or, by earlier releases, as the JSON value itself; `default` when absent or empty.

    `source`: a Zarr group, an xarray Dataset (its attrs) or a mapping of group attributes.
    The keys sicube writes are read whole through `sicube.datacube.record.CubeRecord`.
    """
    from sicube.datacube.record import decoded

    value = decoded(getattr(source, "attrs", source).get(name))
    return default if value is None else value


def record_attrs(attrs: Mapping) -> dict:
    """`attrs` with every record (dict, list, tuple) as a JSON string (see `record_attr`)."""
    return {key: json.dumps(value) if isinstance(value, (dict, list, tuple)) else value
            for key, value in attrs.items()}


class FillFlag(enum.IntEnum):
    """Per-cell outcome of the fill, as stored in the cube's ``fill_flag`` (docs/cube-format.md).

    The fill kernel (`sicube.kernels.fill`) gives the first four; the builder the fifth.
    """

    OBSERVED = 0
    FILLED = 1
    NO_NEIGHBOUR = 2  # no observed cell within the fill's windows: left NaN by the fill
    LAND = 3
    # The north pole hole (never seen by the sensor, not land): set from the ring of observed
    # cells around it by the builder after the Gaussian fill (`sicube.build`, rule in
    # `pipeline.mask.detect_pole_hole` and `kernels.fill.fill_pole_hole`). The kernel never
    # gives this flag.
    POLE_HOLE = 4


class DayQuality(enum.IntFlag):
    """Why a day is suspicious, as bits of the cube's ``day_quality`` (rules in
    `sicube.pipeline.quality`). 0: nothing found, or the day not observed."""

    ALL_EQUAL = 1  # every observed ocean value the same (an all-zero day), or none
    OBS_SHARE = 2  # observed share far from its neighbours' (robust rolling median)
    EXTENT_JUMP = 4  # extent jumps away from both neighbours and back the next day
    OUT_OF_RANGE = 8  # many more values outside [0, 100] than its neighbours


# fill_flag's CF flag_meanings, in value order.
FLAG_MEANINGS = tuple(flag.name.lower() for flag in FillFlag)
# fill_flag values of ocean cells whose sea_ice_conc is not an observation of that day.
NOT_OBSERVED_FLAGS = (FillFlag.FILLED, FillFlag.NO_NEIGHBOUR, FillFlag.POLE_HOLE)
# sensor values: 0 no file that day, then products.Sensor.code (1 AMSR-E, 2 AMSR2).
SENSOR_MEANINGS = ("none", *sorted(products.SENSORS, key=lambda n: products.SENSORS[n].code))

# Measured in benchmarks/RESULTS.md ("Cube chunking and compression"): 8 days x 512 x 512
# reads training windows within ~2 ms of the fastest layout, a full day in 0.04 s, fills
# fastest but for 16-day chunks, with a quarter of the objects of 256 x 256 chunks.
DEFAULT_CHUNKS = {"time": 8, "y": 512, "x": 512}


def parse_chunks(text: str | None) -> dict | None:
    """The `--chunks TIME,Y,X` option as a chunks dict (None: the defaults); BadInput else."""
    if not text:
        return None
    try:
        t, y, x = (int(v) for v in text.split(","))
    except ValueError:
        raise BadInput(f"--chunks {text!r}: give three integers TIME,Y,X") from None
    if min(t, y, x) < 1:
        raise BadInput(f"--chunks {text!r}: sizes must be positive")
    return {"time": t, "y": y, "x": x}


def default_compressors() -> tuple:
    """Blosc lz4 with byte shuffle: smaller than zarr's default zstd and faster to write,
    window reads within noise of it (same benchmark)."""
    from zarr.codecs import BloscCodec

    return (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),)

_STATS_COMMENT = ("over the cells not land on the product's shipped coastline, computed at "
                  "ingest; NaN on days not observed; extent_raw from the cube's cell_area "
                  "when it had one at ingest, else the nominal projected cell area |dx dy|")

ATTRS: dict[str, dict] = {
    "time": {"standard_name": "time", "long_name": "calendar day", "axis": "T"},
    "x": {"standard_name": "projection_x_coordinate", "long_name": "x of cell centre",
          "units": "m", "axis": "X"},
    "y": {"standard_name": "projection_y_coordinate", "long_name": "y of cell centre",
          "units": "m", "axis": "Y"},
    # The one variable with the standard name (so that `ds.cf["sea_ice_area_fraction"]` is
    # it); the raw field, the same quantity before the fill, is its ancillary variable.
    CONC: {"standard_name": "sea_ice_area_fraction", "units": "1",
           "long_name": "sea-ice concentration, gaps filled, land 0",
           "grid_mapping": GRID_MAPPING, "ancillary_variables": f"{FLAG} {RAW}",
           "cell_measures": f"area: {CELL_AREA}"},
    RAW: {"units": "%",
          "long_name": "sea-ice concentration as in the source files (NaN = missing)",
          "comment": "sea_ice_area_fraction in percent before the gap fill; the canonical "
                     "field is sea_ice_conc",
          "grid_mapping": GRID_MAPPING, "cell_measures": f"area: {CELL_AREA}"},
    FLAG: {"long_name": "how each sea_ice_conc value was obtained",
           "flag_values": np.arange(len(FLAG_MEANINGS), dtype=np.uint8),
           "flag_meanings": " ".join(FLAG_MEANINGS), "grid_mapping": GRID_MAPPING},
    OBSERVED: {"long_name": "a source file existed and was ingested for this day"},
    SENSOR: {"long_name": "sensor the day's source file came from",
             "flag_values": np.arange(len(SENSOR_MEANINGS), dtype=np.uint8),
             "flag_meanings": " ".join(SENSOR_MEANINGS)},
    LAND: {"long_name": "land mask from NaN frequency", "flag_values": np.array([0, 1], np.uint8),
           "flag_meanings": "ocean land", "grid_mapping": GRID_MAPPING},
    NAN_RATIO: {"long_name": "share of observed days the cell was missing", "units": "1",
                "grid_mapping": GRID_MAPPING},
    # Its own variable, not a land_mask value, so that land_mask stays 0/1 for every reader
    # that takes "> 0" as land: the pole hole is ocean (ice) under a blind spot.
    POLE_HOLE: {"long_name": "north pole hole: missing on every observed day, not land on the "
                             "shipped coastline, connected to the pole (north grids only)",
                "comment": "sea_ice_conc there (fill_flag 4) is, per day, the mean of the "
                           "observed cells of the ring one space_window wide around the hole; "
                           "on a day the ring has none, the mean of its filled cells",
                "flag_values": np.array([0, 1], np.uint8),
                "flag_meanings": "elsewhere pole_hole", "grid_mapping": GRID_MAPPING},
    **{name: {"long_name": text, "units": units, "comment": _STATS_COMMENT}
       for name, text, units in (
           (OBS_FRACTION, "share of non-land cells observed (not NaN) in sea_ice_conc_raw", "1"),
           (ZERO_FRACTION, "share of observed non-land cells at 0 %", "1"),
           (MEAN_CONC, "mean observed sea_ice_conc_raw over non-land cells", "%"),
           (EXTENT_RAW, "area of observed non-land cells at >= 15 % in sea_ice_conc_raw",
            "km2"))},
    DAY_QUALITY: {"long_name": "why the day is suspicious (0: not flagged or not observed)",
                  "flag_masks": np.array([int(f) for f in DayQuality], np.uint8),
                  "flag_meanings": " ".join(f.name.lower() for f in DayQuality),
                  "comment": "rules and thresholds in the group attribute sicube_build "
                             "(args.quality) and in sicube.pipeline.quality; suspicious days with "
                             "their reasons in the group attribute suspicious_days"},
    CELL_AREA: {"standard_name": "cell_area", "units": "m2", "grid_mapping": GRID_MAPPING,
                "long_name": "area of the cell on the ellipsoid of the grid mapping",
                "comment": "integral of 1/k^2 (k the projection's scale factor) over the "
                           "cell, to second order in its size; relative error ~1e-11 "
                           "(sicube.kernels.area)"},
    EXTENT: {"long_name": "sea-ice extent: total area of cells with sea_ice_conc >= 0.15, "
                          "the pole hole counted as ice, land excluded", "units": "km2",
             "comment": "from the filled field sea_ice_conc and cell_area, per day"},
    AREA: {"long_name": "sea-ice area: sum of sea_ice_conc x cell_area, land excluded",
           "units": "km2",
           "comment": "the pole hole counted at its filled value (mean of its ring)"},
}

DTYPES = {CONC: np.float32, RAW: np.float32, FLAG: np.uint8, OBSERVED: bool, SENSOR: np.uint8,
          LAND: np.uint8, NAN_RATIO: np.float32, POLE_HOLE: np.uint8, CELL_AREA: np.float64,
          EXTENT: np.float64, AREA: np.float64}
# Integer variables get no _FillValue, so they open as integers, not as floats with NaN.
FILL_VALUES = {CONC: np.float32(np.nan), RAW: np.float32(np.nan), FLAG: None,
               LAND: None, NAN_RATIO: np.float32(np.nan), POLE_HOLE: None}
_EMPTY = {CONC: np.nan, RAW: np.nan, FLAG: 0, LAND: 0, NAN_RATIO: np.nan, POLE_HOLE: 0}
CUBE_VARS = (CONC, RAW, FLAG)
GRID_VARS = (LAND, NAN_RATIO, POLE_HOLE)  # cubes from before the pole hole lack POLE_HOLE


def template(days: list[dt.date], x: np.ndarray, y: np.ndarray,
             crs: products.GridCRS | int, chunks: Mapping[str, int] | None = None,
             attrs: Mapping | None = None) -> xr.Dataset:
    """A lazy, empty cube (all missing) with every variable, attribute and chunk of the layout.

    `crs` is the source files' CRS (`sources.read_grid`), or an EPSG code.
    """
    import dask.array as da
    import xarray as xr

    chunks = {**DEFAULT_CHUNKS, **(chunks or {})}
    nt, ny, nx = len(days), y.size, x.size
    cube_chunks = (min(chunks["time"], nt), min(chunks["y"], ny), min(chunks["x"], nx))
    data_vars = {
        name: (("time", "y", "x"),
               da.full((nt, ny, nx), _EMPTY[name], dtype=DTYPES[name], chunks=cube_chunks),
               ATTRS[name])
        for name in CUBE_VARS
    }
    for name in GRID_VARS:
        data_vars[name] = (("y", "x"), da.full((ny, nx), _EMPTY[name], dtype=DTYPES[name],
                                               chunks=cube_chunks[1:]), ATTRS[name])
    # Lazy like the rest: `create` writes it into the new store itself.
    data_vars[CELL_AREA] = (("y", "x"), _cell_area(x, y, crs, cube_chunks[1:]), ATTRS[CELL_AREA])
    # The per-day variables are lazy too: an unwritten chunk reads as the fill value (NaN,
    # 0, False), so the store is made without writing any (each costs a write at creation).
    def per_day(value, dtype):
        return da.full(nt, value, dtype=dtype, chunks=max(nt, 1))

    for name in (EXTENT, AREA):  # NaN until the day's time chunk is filled
        data_vars[name] = (("time",), per_day(np.nan, np.float64), ATTRS[name])
    data_vars[OBSERVED] = (("time",), per_day(False, bool), ATTRS[OBSERVED])
    data_vars[SENSOR] = (("time",), per_day(0, np.uint8), ATTRS[SENSOR])
    for name in DAY_STATS:
        data_vars[name] = (("time",), per_day(np.nan, np.float32), ATTRS[name])
    data_vars[DAY_QUALITY] = (("time",), per_day(0, np.uint8), ATTRS[DAY_QUALITY])
    ds = xr.Dataset(
        data_vars,
        # The grid mapping is a coordinate so that every variable taken from the cube
        # carries its CRS (rioxarray looks for it among the coordinates).
        coords={GRID_MAPPING: ((), np.int32(0), products.grid_mapping_attrs(crs)),
                "time": ("time", to_datetime64(days), ATTRS["time"]),
                "y": ("y", np.asarray(y, np.float64), ATTRS["y"]),
                "x": ("x", np.asarray(x, np.float64), ATTRS["x"])},
        # CF-1.9: the first version to allow the unsigned types of the flag variables.
        attrs={"Conventions": "CF-1.9", "title": "AMSR2 ASI sea-ice concentration datacube",
               VERSION: __version__, MARKER: FORMAT_VERSION, **(attrs or {})},
    )
    for name in (*CUBE_VARS, *GRID_VARS):
        ds[name].encoding["chunks"] = ds[name].data.chunksize
        ds[name].encoding["_FillValue"] = FILL_VALUES[name]
        ds[name].encoding["compressors"] = default_compressors()
    ds[CELL_AREA].encoding.update(chunks=cube_chunks[1:], _FillValue=np.nan,
                                  compressors=default_compressors())
    for name in (EXTENT, AREA):
        ds[name].encoding.update(_FillValue=np.nan, chunks=(max(nt, 1),))
    ds["time"].encoding.update(units="days since 1970-01-01", dtype="int32", chunks=(max(nt, 1),))
    for name in ("x", "y"):  # CF: coordinate variables have no missing values
        ds[name].encoding["_FillValue"] = None
    return ds


def suspicious_days(source) -> dict[dt.date, str]:
    """The cube's suspicious days and why, in day order, from a Zarr group, an xarray
    Dataset (its attrs) or a mapping of group attributes; {} for a cube without any."""
    from sicube.datacube.record import CubeRecord

    found = CubeRecord.from_attrs(source, ["suspicious_days"]).suspicious_days or {}
    return {dt.datetime.strptime(str(k), "%Y%m%d").date(): str(v) for k, v in sorted(found.items())}


def _cell_area(x: np.ndarray, y: np.ndarray, crs: products.GridCRS | int,
               chunks: tuple[int, int]):
    """`kernels.area.cell_area` of the grid in the CRS the cube declares, as a lazy dask array
    computed chunk by chunk (in parallel, each chunk as in the whole grid's result)."""
    import dask.array as da

    from sicube.kernels.area import cell_area_parts

    part = cell_area_parts(x, y, crs.to_pyproj() if isinstance(crs, products.GridCRS) else crs)

    def block(block_info=None):
        (y0, y1), (x0, x1) = block_info[None]["array-location"]
        return part(slice(y0, y1), slice(x0, x1))

    return da.map_blocks(block, chunks=da.core.normalize_chunks(chunks, (y.size, x.size)),
                         dtype=np.float64, meta=np.empty((0, 0)))


def cube_epsg(ds: xr.Dataset) -> int | None:
    """EPSG code of a cube's grid mapping (its code, WKT or CF parameters); None when it has
    none or declares a CRS without one (never a guessed hemisphere)."""
    attrs = ds[GRID_MAPPING].attrs if GRID_MAPPING in ds.variables else {}
    return products.epsg_from_attrs(attrs)


def store_bytes(store: str | os.PathLike, storage_options: dict | None = None) -> int:
    """Bytes the store takes (local path or any fsspec URL); 0 where that cannot be told."""
    from sicube.datacube.store import filesystem, local_path

    local = local_path(store)
    if local is not None:  # no fsspec filesystem made for it
        try:
            return _folder_bytes(local)
        except OSError:  # gone, or not readable
            return 0
    fs, path = filesystem(store, storage_options)
    try:
        return int(fs.du(path))
    except Exception:  # noqa: BLE001 - a server that cannot list (HTTP) answers in its own way
        return 0


def _folder_bytes(path: str | os.PathLike) -> int:
    """Bytes of the files below local folder `path`: one `os.scandir` walk, ~4x cheaper than
    fsspec's `du` (a decade's cube is ~50,000 chunk files, and `update` prints its size)."""
    total, folders = 0, [path]
    while folders:
        with os.scandir(folders.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    folders.append(entry.path)
                else:
                    total += entry.stat(follow_symlinks=False).st_size
    return total


def for_writing(array):
    """`array` set to store every chunk as given.

    By default zarr first checks each chunk for "all fill value" (with a NaN fill value that
    is several full passes and copies per chunk, a large share of a build's time) to skip
    storing it; a compressed empty chunk is a few hundred bytes, cheaper than the check.
    """
    return array.with_config({"write_empty_chunks": True})


def create(store: str, days: list[dt.date], x: np.ndarray, y: np.ndarray,
           crs: products.GridCRS, chunks: Mapping[str, int] | None, attrs: Mapping,
           storage_options: dict | None = None) -> np.ndarray:
    """Write the empty cube (`template`); locally into a temp folder renamed at the end: all
    or nothing. Returns the cell areas it wrote, so that the run need not read them back."""
    from sicube.datacube import store as store_location

    ds = template(days, x, y, crs, chunks=chunks, attrs=attrs)
    with store_location.consolidated_quietly():
        local = store_location.local_path(store)
        if local is not None:  # Ctrl-C, a full disk: no half-made folder stays behind
            with store_location.atomic_folder(local) as tmp:
                ds.to_zarr(str(tmp), mode="w", compute=False, zarr_format=3)
                cells = write_cell_area(str(tmp), ds)
        else:
            target = store_location.open_store(store, storage_options=storage_options, mode="w-")
            ds.to_zarr(target, mode="w-", compute=False, zarr_format=3)
            cells = write_cell_area(store, ds, storage_options)
    return cells


def write_cell_area(store: str, ds: xr.Dataset, storage_options: dict | None = None
                    ) -> np.ndarray:
    """Compute and write the grid's cell areas (lazy in `template`) once, at the cube's
    birth, on this machine's threads (a cluster's workers may not reach a store this
    process just made); returns them."""
    from dask import threaded

    from sicube.datacube.store import open_group_for_writing

    # threaded.get itself, not "threads": dask imports `distributed` (0.7 s) to resolve a name
    cells = ds[CELL_AREA].data.compute(scheduler=threaded.get)
    target = for_writing(open_group_for_writing(store, storage_options=storage_options)[CELL_AREA])
    target[...] = cells
    return cells


def set_status(group, status: str, **attrs) -> None:
    """Say the cube's state (`STATUS`, with other root attributes), and republish the
    consolidated metadata that readers use."""
    from sicube.datacube.store import consolidate

    group.update_attributes({STATUS: status, **attrs})
    consolidate(group.store)


def is_cube(store: str | os.PathLike, storage_options: dict | None = None) -> bool:
    """True when `store` is a Zarr group written by sicube."""
    import zarr

    from sicube.datacube.store import open_store

    try:
        group = zarr.open_group(open_store(store, storage_options=storage_options), mode="r")
    except Exception:  # not a group, not Zarr, not there: all mean "not a cube"
        return False
    return MARKER in group.attrs


def _reason(err: BaseException) -> str:
    """An exception as a short one-line reason (zarr's messages may span lines)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def open_group(store, *, allow_incomplete: bool = False, require_cube: bool = True,
               storage_options: dict | None = None, snapshot: str | None = None):
    """The store's root Zarr group, read-only, after the checks every reader of a cube makes.

    Every reader opens a cube through here (or `open_cube`), so the state check lives in one
    place (`check_complete`). The state is read from the root group's own attributes: in
    Zarr v3 they sit in the root ``zarr.json`` itself, the same document that holds the
    consolidated copy of the children's metadata, so it is never a stale copy.

    `store` is a path or any fsspec URL, opened by `sicube.datacube.store.open_store` (with
    `storage_options`). Raises BadInput (one line) when the store cannot be read as a Zarr
    group (missing, unreachable, no permission), or, with
    `require_cube`, when it is not a sicube cube; IncompleteCube when it is a sicube cube
    whose build or update has not finished, unless `allow_incomplete`. `snapshot`: the
    snapshot id or tag of an icechunk repository to read (`sicube.datacube.versions`).
    """
    import zarr
    from zarr.errors import GroupNotFoundError

    from sicube.datacube.store import NotZarr, consolidated_quietly, open_store

    try:
        zstore = open_store(store, storage_options=storage_options,  # missing, unreachable
                            snapshot=snapshot)
    except NotZarr:
        if require_cube:
            raise BadInput(f"store: {store} is not a sicube cube (no Zarr group there)"
                           ) from None
        raise
    with consolidated_quietly():  # what lets us open a cube over HTTP, which cannot list
        try:
            group = zarr.open_group(zstore, mode="r")
            attrs = dict(group.attrs)
        except GroupNotFoundError as err:  # a zarr.json that is not a group's
            if require_cube:
                raise BadInput(f"store: {store} is not a sicube cube (no Zarr group there)"
                               ) from None
            raise BadInput(f"store: {store} is not a readable Zarr store ({_reason(err)})"
                           ) from None
        except Exception as err:  # unreadable, corrupt
            raise BadInput(f"store: {store} is not a readable Zarr store ({_reason(err)})"
                           ) from None
    if MARKER in attrs:
        from sicube.datacube.record import check_format

        check_format(attrs, store, writing=False)
        check_complete(store, attrs, allow_incomplete)
    elif require_cube:
        raise BadInput(f"store: {store} is not a sicube cube (no Zarr group with a {MARKER} "
                       "attribute)")
    return group


def cube_status(attrs: Mapping) -> str:
    """A cube's state from its group attributes: "building", "complete" or "failed: reason"
    (`record.CubeRecord.state`, which knows cubes from before the state attribute)."""
    from sicube.datacube.record import CubeRecord

    return CubeRecord.from_attrs(attrs, ["status", "build"]).state


class IncompleteCube(BadInput):
    """The cube's build or update has not finished: its days are not all ingested or filled."""


def check_complete(store: str | os.PathLike, attrs: Mapping, allow_incomplete: bool) -> str:
    """The cube's state; IncompleteCube unless it is complete or `allow_incomplete` is set."""
    status = cube_status(attrs)
    if status not in READABLE and not allow_incomplete:
        finish = attrs.get(FINISH) or "the same `sicube build` command again"
        raise IncompleteCube(
            f"{store}: unfinished cube (state: {status}); finish it with {finish}, "
            "or pass allow_incomplete=True (--allow-incomplete) to read it as it is")
    return status


def open_cube(store: str | os.PathLike, *, allow_incomplete: bool = False,
              storage_options: dict | None = None, snapshot: str | None = None,
              **kwargs) -> xr.Dataset:
    """Open a sicube cube lazily (dask arrays).

    `store` is a path or any fsspec URL (``s3://``, ``http://``, ``memory://``, ...), with
    `storage_options` for its file system. It writes a CF-valid netCDF file with
    `to_netcdf` (`netcdf_ready`). BadInput when `store` cannot be read or is not a
    cube; IncompleteCube when its build or update has not finished, unless
    `allow_incomplete` (then its unwritten cells read as NaN / 0). `kwargs` go to
    `xarray.open_zarr`.

    An icechunk repository (``icechunk://PATH``, ``icechunk+s3://bucket/prefix``) opens at
    the tip of ``main``, or at `snapshot` (a snapshot id or tag); the snapshot id read is in
    ``ds.encoding["sicube_snapshot"]``.
    """
    import xarray as xr

    from sicube.datacube.store import consolidated_quietly
    from sicube.datacube.versions import snapshot_of

    group = open_group(store, allow_incomplete=allow_incomplete,
                       storage_options=storage_options, snapshot=snapshot)
    read = snapshot_of(group.store)
    if read is not None:  # icechunk keeps no consolidated metadata: it lists fast
        kwargs.setdefault("consolidated", False)
    try:
        # A cube mid-build may have no current consolidated metadata (the builder
        # re-consolidates at each state change); reading without it is right, not news.
        with consolidated_quietly():
            ds = xr.open_zarr(group.store, **kwargs)
    except (OSError, ValueError, KeyError) as err:  # a variable's metadata unreadable or corrupt
        raise BadInput(f"store: {store} cannot be read as a cube ({_reason(err)})") from None
    if read is not None:
        ds.encoding["sicube_snapshot"] = read
    return netcdf_ready(ds)


def netcdf_ready(ds: xr.Dataset) -> xr.Dataset:
    """`ds` (as opened from Zarr) set to write a CF-valid netCDF file with `to_netcdf`.

    Zarr stores attributes as JSON, which has no integer types: flag_values / flag_masks
    open as lists of ints (int64 in a netCDF file, which CF forbids on a uint8 flag
    variable), so they get the variable's type. xarray gives float variables a NaN
    _FillValue in netCDF unless told not to, which CF forbids on coordinate variables.
    """
    for var in ds.variables.values():
        for key in ("flag_values", "flag_masks"):
            if key in var.attrs and var.dtype.kind in "iu":
                var.attrs[key] = np.asarray(var.attrs[key], dtype=var.dtype)
    for name in ("x", "y"):
        if name in ds.variables:
            ds[name].encoding["_FillValue"] = None
    return ds
