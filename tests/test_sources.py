"""Reading daily files: the parallel raw-chunk decoder against netCDF-C for every layout, the
CRS from the file, damage, range screening."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import numpy as np
import pytest

from sicube.archive import products, sources
from sicube.archive.synthetic import STORAGE, sample_day, write_day_file
from sicube.datacube import cube
from sicube.errors import BadSourceFile

STEP = 8  # 448 x 304 cells
DAY = dt.date(2024, 3, 15)


def _write(path: Path, z: np.ndarray, **storage) -> Path:
    """A daily file with `z` stored as `storage` says (netCDF4.createVariable arguments);
    no arguments: the real archive's layout."""
    return write_day_file(path, z, DAY, step=STEP, storage=storage or None)


@pytest.fixture(scope="module")
def day() -> np.ndarray:
    """One sample day in percent, NaN on land, in the pole hole and the swath gaps."""
    return sample_day(DAY, step=STEP, seed=1)


FAST = [
    STORAGE["gdal"],  # the real archive: one row per chunk, deflate 1, shuffle
    {"zlib": True, "complevel": 4, "shuffle": True},  # netCDF's default chunking
    {"zlib": True, "complevel": 1, "shuffle": True, "chunksizes": (100, 128)},  # edge chunks
    {"zlib": True, "complevel": 6, "shuffle": False, "chunksizes": (448, 304)},  # one chunk
    {"zlib": True, "shuffle": True, "chunksizes": (1, 304)},  # a row per chunk
    STORAGE["y-descending"],  # rows north to south: flipped while placing the chunks
]
SLOW = [
    {"contiguous": True},  # no chunks
    {"zlib": True, "shuffle": True, "fletcher32": True},  # a checksum filter
    {"zlib": True, "shuffle": True, "datatype": "f8"},  # not float32
    {"chunksizes": (64, 64)},  # chunked, no compression
    STORAGE["netcdf3"],  # netCDF-3 classic: not HDF5 at all
    STORAGE["int16"],  # packed: scale_factor and an integer _FillValue
]


def _netcdf4_reading(path: Path) -> np.ndarray:
    """`z` as netCDF4-python reads it (unpacked, fill masked -> NaN), south to north."""
    import netCDF4

    with netCDF4.Dataset(path) as nc:
        z = np.ma.filled(nc["z"][:].astype(np.float32), np.nan)
        return z[::-1] if nc["y"][1] < nc["y"][0] else z


@pytest.mark.parametrize("layout", FAST + SLOW)
def test_decoder_gives_netcdf_c_bits_for_every_layout(tmp_path, day, layout):
    path = _write(tmp_path / "asi-AMSR2-n3125-20240315-v5.4.nc", day, **dict(layout))
    flip = bool(layout.get("y_descending"))
    fast = np.empty(day.shape, np.float32)
    used_fast = sources._decode_fast(path, fast, flip)
    assert used_fast == (layout in FAST)
    via_netcdf = np.empty(day.shape, np.float32)
    sources._decode_netcdf(path, via_netcdf, flip)
    field = sources.read_day(path)
    assert np.all(np.diff(field.grid.y) > 0)  # south to north, whatever the file's order
    want = _netcdf4_reading(path)
    for got in (field.z, via_netcdf, *([fast] if used_fast else [])):
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    if layout.get("datatype") == "i2":  # packed to 0.01 %: equal to within the packing
        np.testing.assert_allclose(field.z, day, atol=0.006)
        assert np.array_equal(np.isnan(field.z), np.isnan(day))
    else:
        np.testing.assert_array_equal(field.z.view(np.uint32), day.view(np.uint32))


def test_read_day_fills_a_given_array(tmp_path, day):
    path = _write(tmp_path / "d.nc", day, zlib=True, shuffle=True)
    stack = np.full((2, *day.shape), -1.0, np.float32)
    field = sources.read_day(path, out=stack[1])
    assert np.shares_memory(field.z, stack[1])
    np.testing.assert_array_equal(stack[1], day)
    assert (stack[0] == -1).all()
    with pytest.raises(ValueError, match="float32"):
        sources.read_day(path, out=np.empty(day.shape, np.float64))
    with pytest.raises(ValueError, match="C-contiguous"):
        sources.read_day(path, out=np.empty(day.shape[::-1], np.float32).T)


def test_days_decode_in_parallel_threads_identically(tmp_path, day):
    paths = [_write(tmp_path / f"d{i}.nc", np.where(day > i, day, np.nan).astype(np.float32),
                    zlib=True, shuffle=True, chunksizes=(64, 64)) for i in range(6)]
    want = [sources.read_day(p).z for p in paths]
    got: dict[int, np.ndarray] = {}

    def read(i: int) -> None:
        for _ in range(3):
            got[i] = sources.read_day(paths[i]).z

    threads = [threading.Thread(target=read, args=(i,)) for i in range(len(paths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, w in enumerate(want):
        np.testing.assert_array_equal(got[i], w)


def _damage(path: Path, at: float) -> None:
    """Overwrite 64 bytes at a relative position (inside the compressed data)."""
    data = bytearray(path.read_bytes())
    i = int(len(data) * at)
    data[i:i + 64] = bytes(64)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("layout", [FAST[0], FAST[2], SLOW[1]])
def test_damaged_data_is_a_bad_source_file(tmp_path, day, layout):
    path = _write(tmp_path / "d.nc", day, **dict(layout))
    _damage(path, 0.6)
    with pytest.raises(BadSourceFile, match="d.nc"):
        sources.read_day(path)


def test_truncated_file_is_a_bad_source_file(tmp_path, day):
    path = _write(tmp_path / "d.nc", day, zlib=True, shuffle=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(BadSourceFile, match="d.nc"):
        sources.read_day(path)


def test_values_outside_0_100_become_nan_and_are_counted(tmp_path, day):
    z = day.copy()
    z[0, :5] = 150.0
    z[1, :3] = -1.0
    path = _write(tmp_path / "d.nc", z, zlib=True, shuffle=True)
    field = sources.read_day(path)
    assert field.out_of_range == 8
    assert np.isnan(field.z[0, :5]).all() and np.isnan(field.z[1, :3]).all()
    keep = np.ones(z.shape, bool)
    keep[0, :5] = keep[1, :3] = False
    np.testing.assert_array_equal(field.z[keep], z[keep])


# --- the CRS comes from the file -----------------------------------------------------------------


def _edit(path: Path, edit) -> Path:
    """Apply `edit(netCDF4.Dataset)` to a written file in place."""
    import netCDF4

    with netCDF4.Dataset(path, "a") as nc:
        edit(nc)
    return path


def _sample_file(tmp_path: Path, grid: str, step: int = 16) -> Path:
    z = sample_day(DAY, step=step, grid=grid)
    return write_day_file(tmp_path / products.file_name(DAY, grid), z, DAY, step=step,
                          grid=grid)


@pytest.mark.parametrize("grid, epsg, south", [("s6250", 3412, True), ("n3125", 3411, False)])
def test_crs_is_read_from_the_wkt_without_an_epsg_code(tmp_path, grid, epsg, south):
    import netCDF4

    path = _sample_file(tmp_path, grid)
    with netCDF4.Dataset(path) as nc:
        attrs = nc["polar_stereographic"].ncattrs()
        assert "epsg_code" not in attrs and "AUTHORITY" not in nc["polar_stereographic"].crs_wkt
    grid_coords, crs = sources.read_grid(path)
    assert (crs.epsg, crs.south, crs.ellipsoid) == (epsg, south, "Hughes 1980")
    assert sources.read_day(path).epsg == epsg
    assert grid_coords.shape == (products.GRIDS[grid].ny // 16, products.GRIDS[grid].nx // 16)


def test_crs_from_cf_parameters_alone(tmp_path):
    def drop_wkt(nc):
        for name in ("spatial_ref", "crs_wkt", "GeoTransform"):
            nc["polar_stereographic"].delncattr(name)

    path = _edit(_sample_file(tmp_path, "s3125"), drop_wkt)
    _, crs = sources.read_grid(path)
    assert crs.epsg == 3412 and crs.south


def _cf_files(tmp_path: Path, tag: str, count: int) -> list[Path]:
    """`count` days written by netCDF4 with the grid mapping as CF attributes alone, all with
    one attribute set no other test has (`tag`): its first parse happens here."""
    paths = []
    for i in range(count):
        path = write_day_file(tmp_path / tag / f"{i}.nc", sample_day(DAY, step=16), DAY,
                              step=16, grid_mapping="cf")
        paths.append(_edit(path, lambda nc: nc["polar_stereographic"].setncattr(
            "comment", f"{tmp_path} {tag}")))
    return paths


def test_cf_attributes_give_the_grid_and_crs_of_the_wkt_parsed_once_per_set(tmp_path,
                                                                             monkeypatch):
    import netCDF4
    from pyproj import CRS

    parses = []  # (attributes parsed, NETCDF_LOCK held meanwhile)
    real_from_cf = CRS.from_cf

    def counting_from_cf(in_cf, *args, **kwargs):
        parses.append((in_cf.get("comment"), sources.NETCDF_LOCK.locked()))
        return real_from_cf(in_cf, *args, **kwargs)

    monkeypatch.setattr(CRS, "from_cf", staticmethod(counting_from_cf))
    gdal = _sample_file(tmp_path, "n3125")
    with netCDF4.Dataset(gdal) as nc:
        assert "crs_wkt" in nc["polar_stereographic"].ncattrs()
    first, second = _cf_files(tmp_path, "a", 2)
    with netCDF4.Dataset(first) as nc:
        assert not {"crs_wkt", "spatial_ref", "epsg_code"} & set(
            nc["polar_stereographic"].ncattrs())
    wkt_grid, wkt_crs = sources.read_grid(gdal)
    for path in (first, second):
        assert sources.check_day_file(path).same_as(wkt_grid)
        assert sources.check_day_file(path, full=False).same_as(wkt_grid)
        grid, crs = sources.read_grid(path)
        assert grid.same_as(wkt_grid) and crs.same_projection(wkt_crs)
        assert (crs.epsg, crs.south, crs.ellipsoid) == (wkt_crs.epsg, False, "Hughes 1980")
        assert sources.read_day(path).crs == crs
    assert parses == [(f"{tmp_path} a", False)]  # once for six reads, outside the lock
    other = _cf_files(tmp_path, "b", 1)[0]
    assert sources.read_grid(other)[1] == crs  # another attribute set: the same CRS ...
    assert len(parses) == 2  # ... parsed once more


def _drop_grid_mapping(nc):
    nc.renameVariable("polar_stereographic", "unused")
    nc["z"].delncattr("grid_mapping")


def test_no_grid_mapping_takes_the_grid_chosen_by_shape_with_a_warning(tmp_path, caplog):
    south = _edit(_sample_file(tmp_path, "s6250", step=4), _drop_grid_mapping)
    north = _edit(_sample_file(tmp_path, "n3125", step=8), _drop_grid_mapping)
    assert sources.read_grid(south)[1].epsg == 3412
    assert sources.read_grid(north)[1].epsg == 3411
    assert "no grid mapping" in caplog.text and "s6250" in caplog.text


def test_no_grid_mapping_on_an_unknown_grid_is_refused(tmp_path):
    def shift(nc):
        _drop_grid_mapping(nc)
        nc["x"][:] = nc["x"][:] + 1000.0

    path = _edit(_sample_file(tmp_path, "n3125"), shift)
    with pytest.raises(BadSourceFile, match=f"{path.name}.*no grid mapping"):
        sources.read_grid(path)


def test_another_hemisphere_or_projection_is_refused_with_the_file_name(tmp_path):
    north = _sample_file(tmp_path, "n3125")
    south = _sample_file(tmp_path, "s3125")
    _, expected = sources.read_grid(north)
    with pytest.raises(BadSourceFile, match=south.name):
        sources.read_grid(south, expected_crs=expected)

    def rotate(nc):  # the same CF parameters but another central meridian, no WKT
        gm = nc["polar_stereographic"]
        for name in ("spatial_ref", "crs_wkt"):
            gm.delncattr(name)
        gm.straight_vertical_longitude_from_pole = 0.0

    other = _edit(_sample_file(tmp_path / "o", "n3125"), rotate)
    _, crs = sources.read_grid(other)
    assert crs.epsg is None and not crs.same_projection(expected)
    with pytest.raises(BadSourceFile, match=other.name):
        sources.read_day(other, expected_crs=expected)


def test_an_ellipsoid_alone_may_differ(tmp_path):
    path = _sample_file(tmp_path, "n3125")
    wgs84 = products.GridCRS.from_epsg(3413)
    field = sources.read_day(path, expected_crs=wgs84)  # accepted: the caller records it
    assert field.crs.ellipsoid == "Hughes 1980" and wgs84.ellipsoid == "WGS 84"
    assert field.crs.same_projection(wgs84)


def test_the_cube_declares_the_files_crs(tmp_path):
    import rioxarray  # noqa: F401  (registers .rio)
    import xarray as xr

    grid, crs = sources.read_grid(_sample_file(tmp_path, "s6250"))
    ds = cube.template([DAY], grid.x, grid.y, crs, chunks={"time": 1, "y": 64, "x": 64})
    ds.to_zarr(tmp_path / "c.zarr", mode="w", compute=False, consolidated=False)
    with xr.open_zarr(tmp_path / "c.zarr", consolidated=False) as back:
        rio_crs = back[cube.CONC].rio.crs
        assert rio_crs.to_epsg() == 3412
        assert back[cube.GRID_MAPPING].attrs["latitude_of_projection_origin"] == -90
        assert cube.cube_epsg(back) == 3412
        assert cube.cube_epsg(back.drop_vars(cube.GRID_MAPPING)) is None  # no guessed north


@pytest.mark.parametrize("name, parsed", [
    ("asi-AMSR2-n3125-20240229-v5.4.nc", ("n3125", dt.date(2024, 2, 29))),
    ("asi-n6250-20100101-v5.nc", ("n6250", dt.date(2010, 1, 1))),
    ("asi-AMSR2-n3125-20230229-v5.4.nc", None),  # no 29 February that year
    ("asi-AMSR2-n3125-20241301-v5.4.nc", None),
    ("asi-AMSR2-n3125-00000101-v5.4.nc", None),
    ("asi-AMSR2-n3125-2024011-v5.4.nc", None),
])
def test_file_names_give_their_grid_and_day_and_impossible_dates_none(name, parsed):
    assert products.parse_file_name(name) == parsed


def test_find_day_files_keeps_the_first_path_in_path_order_when_a_day_repeats(tmp_path):
    name = "asi-AMSR2-n3125-20240105-v5.4.nc"
    for folder in ("b", "a-b", "a/b"):  # path order: "a/b" < "a-b" < "b" ("/" sorts last as text)
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / folder / name).write_bytes(b"")
    assert sources.find_day_files(tmp_path) == {dt.date(2024, 1, 5): tmp_path / "a" / "b" / name}
