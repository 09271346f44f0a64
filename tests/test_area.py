"""sicube.kernels.area: cell areas on the ellipsoid checked against closed forms and pyproj."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from pyproj import CRS, Geod, Proj, Transformer

from sicube import params
from sicube.archive import products
from sicube.datacube import cube
from sicube.kernels import area
from tests.conftest import ARCHIVE_END, ARCHIVE_START, SMALL_CUBE_CHUNKS

HUGHES_A, HUGHES_B = 6378273.0, 6356889.449


def _cap_area(a: float, b: float, lat_deg: float) -> float:
    """Closed-form area (m²) of the ellipsoid north of `lat_deg`: pi a² (q_p - q(phi)),
    q the authalic function (Snyder 1987, eq. 3-12)."""
    e = np.sqrt(1 - (b / a) ** 2)

    def q(phi):
        s = np.sin(phi)
        return (1 - e * e) * (s / (1 - (e * s) ** 2)
                              - np.log((1 - e * s) / (1 + e * s)) / (2 * e))

    return np.pi * a * a * (q(np.pi / 2) - q(np.radians(lat_deg)))


def test_products_crs_is_hughes():
    ell = CRS.from_epsg(products.GRIDS["n3125"].epsg_hughes).ellipsoid
    assert (ell.semi_major_metre, round(ell.semi_minor_metre, 3)) == (HUGHES_A, HUGHES_B)


def test_cap_formula_gives_the_whole_ellipsoid():
    """The closed form itself: two caps from the equator are the ellipsoid's surface."""
    a, b = HUGHES_A, HUGHES_B
    e = np.sqrt(1 - (b / a) ** 2)
    surface = 2 * np.pi * a * a + np.pi * b * b / e * np.log((1 + e) / (1 - e))
    assert 2 * _cap_area(a, b, 0.0) == pytest.approx(surface, rel=1e-12)


@pytest.mark.parametrize("code", [3411, 3412, 3413])
def test_inverse_scale_matches_pyproj(code):
    """1/k² in closed form equals pyproj's areal scale factor at random points."""
    rng = np.random.default_rng(code)
    x, y = rng.uniform(-4e6, 4e6, 500), rng.uniform(-5e6, 5e6, 500)
    proj = Proj(CRS.from_epsg(code))
    lon, lat = proj(x, y, inverse=True)
    factors = proj.get_factors(lon, lat)
    np.testing.assert_allclose(area.inverse_scale_squared(x, y, code) * factors.areal_scale,
                               1.0, rtol=1e-9)


def test_cap_north_of_80_equals_closed_form():
    """Σ cell_area x (share of the cell north of 80° N) on n3125 = the cap's area, 0.05 %.

    The cap is a disc around the pole on the map; cells wholly inside count fully, cells
    crossing its rim by the share of 24 x 24 sub-points inside.
    """
    grid = products.GRIDS["n3125"]
    x, y = grid.x(), grid.y()
    crs = grid.crs.to_pyproj()
    radius = np.hypot(*Transformer.from_crs(4326, crs, always_xy=True).transform(0.0, 80.0))
    cols = np.nonzero(np.abs(x) < radius + 2 * grid.cell_size)[0]
    rows = np.nonzero(np.abs(y) < radius + 2 * grid.cell_size)[0]
    xs, ys = x[cols], y[rows]
    cells = area.cell_area(xs, ys, crs)
    sub = (np.arange(24) + 0.5) / 24 - 0.5
    px = xs[:, None] + grid.cell_size * sub  # (nx, 24)
    py = ys[:, None] + grid.cell_size * sub
    share = np.empty(cells.shape)
    for i in range(ys.size):
        inside = np.hypot(px[None, :, :, None], py[i][None, None, None, :]) < radius
        share[i] = inside.mean(axis=(2, 3))[0]
    total = float((cells * share).sum())
    expected = _cap_area(HUGHES_A, HUGHES_B, 80.0)
    print("cap: relative error", total / expected - 1)
    assert abs(total / expected - 1) < 5e-4, (total, expected)
    assert share[0].max() == share[-1].max() == share[:, 0].max() == 0  # the whole rim is in
    assert 0 < share.mean() < 1


def test_whole_grid_equals_geodesic_area_of_the_rectangle():
    """Σ cell_area over n6250 = the area of the grid's rectangle computed independently:
    pyproj.Geod's geodesic area of its edges, densified every 5 km on the map."""
    grid = products.GRIDS["n6250"]
    crs = grid.crs.to_pyproj()
    total = area.cell_area(grid.x(), grid.y(), crs).sum()
    x0, y0 = grid.x_min, grid.y_min
    x1, y1 = x0 + grid.nx * grid.cell_size, y0 + grid.ny * grid.cell_size
    n = 2000
    edge = np.linspace(0, 1, n, endpoint=False)
    bx = np.concatenate([x0 + (x1 - x0) * edge, np.full(n, x1), x1 - (x1 - x0) * edge,
                         np.full(n, x0)])
    by = np.concatenate([np.full(n, y0), y0 + (y1 - y0) * edge, np.full(n, y1),
                         y1 - (y1 - y0) * edge])
    lon, lat = Transformer.from_crs(crs, 4326, always_xy=True).transform(bx, by)
    geod = Geod(a=HUGHES_A, b=HUGHES_B)
    geodesic, _ = geod.polygon_area_perimeter(lon, lat)
    print("grid: relative error", total / abs(geodesic) - 1)
    assert abs(total / abs(geodesic) - 1) < 1e-6, (total, geodesic)


@pytest.mark.parametrize("code, x0", [(3411, 0.0), (3412, 0.0), ("+proj=stere +lat_0=90 "
                                     "+lat_ts=70 +lon_0=-45 +x_0=2e5 +y_0=-1e5 +ellps=WGS84", 2e5)])
def test_tabulated_rule_equals_direct_evaluation(code, x0):
    """The tabulated second-order rule equals a direct 2 x 2 Gauss-Legendre rule on the exact
    1/k² within 1e-10 relative, on cells 4 times taller than wide (false origin too)."""
    x = np.arange(-300, 300) * 3125.0 + 1562.5 + x0
    y = np.arange(-40, 40) * 12_500.0 + 6250.0 - (1e5 if x0 else 0.0)
    got = area.cell_area(x, y, code)
    nodes = np.array([-0.5, 0.5]) / np.sqrt(3.0)  # Gauss-Legendre on [-1/2, 1/2]
    qx, qy = (x[:, None] + 3125.0 * nodes).ravel(), (y[:, None] + 12_500.0 * nodes).ravel()
    f = area.inverse_scale_squared(qx[None, :], qy[:, None], code)
    want = f.reshape(y.size, 2, x.size, 2).mean(axis=(1, 3)) * 3125.0 * 12_500.0
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_cell_area_refuses_other_projections():
    with pytest.raises(ValueError, match="polar stereographic"):
        area.cell_area(np.arange(3.0), np.arange(3.0), 4326)


def test_extent_area_of_a_block_equals_a_direct_sum():
    rng = np.random.default_rng(1)
    conc = rng.random((3, 5, 6)).astype(np.float32)
    conc[0, 0, 0] = np.nan
    cells = rng.uniform(1e6, 2e6, (5, 6))
    ocean = rng.random((5, 6)) > 0.2
    extent, ice = area.extent_area(conc, cells, ocean)
    for t in range(3):
        c = np.nan_to_num(conc[t].astype(np.float64))
        assert extent[t] == pytest.approx(cells[(c >= 0.15) & ocean].sum() / 1e6, rel=1e-12)
        assert ice[t] == pytest.approx((c * cells * ocean).sum() / 1e6, rel=1e-12)


_EXTENT_BITS = """
import numpy as np
from sicube.kernels import area
rng = np.random.default_rng(7)
conc = rng.random((4, 300, 301)).astype(np.float32)
conc[rng.random(conc.shape) < 0.3] = np.nan
cells = rng.uniform(9e6, 1e7, (300, 301))
extent, ice = area.extent_area(conc, cells, rng.random((300, 301)) > 0.2)
print(np.concatenate([extent, ice]).tobytes().hex())
"""


def test_extent_area_gives_the_same_bits_on_every_cpu(tmp_path):
    """Compiled afresh for an SSE2-only CPU, for AVX2 and for this machine's CPU, the sums
    give the same bits (a vectorized float sum's order follows the CPU's vector width)."""
    import os
    import subprocess
    import sys

    bits = {}
    for cpu in ("generic", "haswell", "host"):
        env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / cpu)}
        if cpu != "host":
            env["NUMBA_CPU_NAME"] = cpu
        run = subprocess.run([sys.executable, "-c", _EXTENT_BITS], env=env, text=True,
                             capture_output=True, check=True)
        bits[cpu] = run.stdout.strip()
    assert bits["generic"] == bits["haswell"] == bits["host"]


def test_extent_area_refuses_cell_areas_that_are_not_finite():
    with pytest.raises(ValueError, match="finite"):
        area.extent_area(np.zeros((1, 2, 2), np.float32), np.full((2, 2), np.inf))


def test_one_extent_rule_for_the_kernel_numpy_and_dask():
    # A cell counts from exactly EXTENT_THRESHOLD up, NaN never: the compiled sums (the fill's
    # finishing pass), NumPy and Dask arrays (the extent command) all apply counts_toward_extent.
    import dask.array as da

    below = np.nextafter(area.EXTENT_THRESHOLD, 0)
    conc = np.array([[[area.EXTENT_THRESHOLD, below, np.nan, 1.0]]])
    cells = np.full((1, 4), 1e6)
    expected = [True, False, False, True]
    assert area.counts_toward_extent(conc)[0, 0].tolist() == expected
    assert area.counts_toward_extent(da.from_array(conc)).compute()[0, 0].tolist() == expected
    assert area.extent_area(conc, cells)[0][0] == sum(expected)
    assert params.EXTENT_THRESHOLD_PERCENT == 100 * area.EXTENT_THRESHOLD == 15.0  # quality's


# --- stored in the cube by the builder, kept current by update ----------------------------------


def _numpy_extent_area(store) -> tuple[np.ndarray, np.ndarray]:
    """Extent and area (km²) of every day of a cube, straight from its arrays with NumPy."""
    import zarr

    group = zarr.open_group(str(store), mode="r")
    conc = group[cube.CONC][:].astype(np.float64)
    cells = group[cube.CELL_AREA][:] / 1e6
    ocean = group[cube.LAND][:] == 0
    hole = group[cube.POLE_HOLE][:].astype(bool)
    ice_cells = ((conc >= 0.15) | hole) & ocean
    return (ice_cells * cells).sum(axis=(1, 2)), (conc * cells * ocean).sum(axis=(1, 2))


def test_built_cube_stores_cell_area_extent_and_area(small_cube):
    import zarr

    group = zarr.open_group(str(small_cube), mode="r")
    x, y = group["x"][:], group["y"][:]
    crs = products.GridCRS.from_attrs(group[cube.GRID_MAPPING].attrs).to_pyproj()
    np.testing.assert_array_equal(group[cube.CELL_AREA][:], area.cell_area(x, y, crs))
    assert group[cube.POLE_HOLE][:].any()  # the rule for the hole is exercised
    extent, ice = _numpy_extent_area(small_cube)
    np.testing.assert_allclose(group[cube.EXTENT][:], extent, rtol=1e-9)
    np.testing.assert_allclose(group[cube.AREA][:], ice, rtol=1e-9)
    ds = cube.open_cube(small_cube)
    assert ds[cube.EXTENT].attrs["units"] == ds[cube.AREA].attrs["units"] == "km2"
    assert ds[cube.CELL_AREA].attrs["units"] == "m2"
    assert 1e5 < float(ds[cube.EXTENT].min()) and float(ds[cube.AREA].max()) < 2e7


def test_update_keeps_extent_and_area_current(archive, tmp_path):
    from sicube.pipeline.build import build, update

    store = tmp_path / "grow.zarr"
    build(ARCHIVE_START, ARCHIVE_START + dt.timedelta(days=6), store, source=archive.root,
          chunks=SMALL_CUBE_CHUNKS, progress=False)
    update(store, ARCHIVE_END, source=archive.root, progress=False)
    ds = cube.open_cube(store)
    assert ds.sizes["time"] == (ARCHIVE_END - ARCHIVE_START).days + 1
    extent, ice = _numpy_extent_area(store)
    assert not np.isnan(ds[cube.EXTENT].values).any()
    np.testing.assert_allclose(ds[cube.EXTENT].values, extent, rtol=1e-9)
    np.testing.assert_allclose(ds[cube.AREA].values, ice, rtol=1e-9)


# --- sicube extent: API and command -----------------------------------------------------------


def test_extent_command_writes_the_series_and_a_plot(small_cube, tmp_path, capsys):
    import pandas as pd

    from sicube.cli import main

    csv, png = tmp_path / "extent.csv", tmp_path / "extent.png"
    assert main(["extent", "--store", str(small_cube), "--csv", str(csv), "--plot",
                 str(png)]) == 0
    assert f"wrote {csv}" in capsys.readouterr().out
    table = pd.read_csv(csv)
    assert list(table.columns) == ["date", "observed", "sea_ice_extent_km2", "sea_ice_area_km2"]
    ds = cube.open_cube(small_cube)
    np.testing.assert_allclose(table["sea_ice_extent_km2"], ds[cube.EXTENT].values, atol=1e-3)
    assert table["date"].iloc[0] == f"{ARCHIVE_START}" and len(table) == ds.sizes["time"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_extent_of_a_region_equals_numpy(small_cube):
    import zarr

    from sicube.analysis.extent import extent

    group = zarr.open_group(str(small_cube), mode="r")
    y0, y1, x0, x1 = 100, 160, 40, 110  # across the pole hole and chunk edges
    table = extent(small_cube, region=f"{y0},{y1},{x0},{x1}")
    conc = group[cube.CONC][:, y0:y1, x0:x1].astype(np.float64)
    cells = group[cube.CELL_AREA][y0:y1, x0:x1] / 1e6
    ocean = group[cube.LAND][y0:y1, x0:x1] == 0
    hole = group[cube.POLE_HOLE][y0:y1, x0:x1] > 0
    assert hole.any()
    want = ((((conc >= 0.15) | hole) & ocean) * cells).sum(axis=(1, 2))
    np.testing.assert_allclose(table["sea_ice_extent_km2"], want, rtol=1e-12)
    np.testing.assert_allclose(table["sea_ice_area_km2"], (conc * cells * ocean).sum(axis=(1, 2)),
                               rtol=1e-12)
    whole = extent(small_cube, region=f"0,{group['y'].size},0,{group['x'].size}")
    np.testing.assert_allclose(whole["sea_ice_extent_km2"], group[cube.EXTENT][:], rtol=1e-9)


def test_extent_band_over_more_than_a_year(tmp_path):
    from sicube.analysis.extent import BAND_COLUMNS, extent
    from sicube.testing import synthetic_cube

    store = synthetic_cube(tmp_path / "two.zarr", start=20230101, n_days=800, shape=(8, 8),
                           missing=(10, 400), chunks={"time": 32, "y": 8, "x": 8})
    table = extent(store, half_window=0, plot=tmp_path / "band.png")
    assert all(c in table for c in BAND_COLUMNS)
    # With no pooling, a day of year's mean is the mean over its observed days.
    jan5 = table[table["date"].str.endswith("-01-05") & table["observed"]]
    assert len(jan5) == 3
    assert table[BAND_COLUMNS[0]].iloc[4] == pytest.approx(jan5["sea_ice_extent_km2"].mean())
    assert table[BAND_COLUMNS[1]].iloc[4] == pytest.approx(
        jan5["sea_ice_extent_km2"].std(ddof=0))
    assert (tmp_path / "band.png").stat().st_size > 10_000


@pytest.mark.parametrize("region, message", [("0,10,0", "expected ymin,ymax,xmin,xmax"),
                                             ("0,100000,0,10", "outside the"),
                                             ("5,5,0,10", "outside the")])
def test_extent_bad_region_is_one_line_exit_2(small_cube, region, message, capsys):
    from sicube.cli import main

    assert main(["extent", "--store", str(small_cube), "--region", region]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_extent_of_an_unfinished_cube_is_refused(tmp_path, capsys):
    import zarr

    from sicube.cli import main
    from sicube.testing import synthetic_cube

    store = synthetic_cube(tmp_path / "c.zarr", n_days=4, missing=())
    zarr.open_group(str(store), mode="r+").attrs[cube.STATUS] = cube.BUILDING
    assert main(["extent", "--store", str(store)]) == 2
    err = capsys.readouterr().err
    assert "unfinished cube" in err and err.count("\n") == 1
    assert main(["extent", "--store", str(tmp_path / "nothing.zarr")]) == 2
    assert "nothing.zarr: does not exist" in capsys.readouterr().err
