import subprocess
import sys

import numpy as np
import pytest
import xarray as xr
from PIL import Image

from sicube.datacube import cube

from .test_imports import BLOCKED_CLI


@pytest.mark.slow
def test_demo_leaves_every_file_it_promises(tmp_path):
    out = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "sicube", "demo", "--days", "12", "--step", "16", "--out",
         str(out), "-q"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    for name in ("cube.zarr", "land_mask.nc", "day.png", "mask.png", "compare.png"):
        assert (out / name).exists(), name
        assert str(out / name) in done.stdout
    ds = xr.open_zarr(out / "cube.zarr")
    assert ds.sizes["time"] == 12 and ds[cube.OBSERVED].values.sum() >= 10
    assert ds.attrs["source_base_url"].startswith("http://127.0.0.1:")
    for name in ("day.png", "mask.png", "compare.png"):
        pixels = np.asarray(Image.open(out / name).convert("L"))
        assert pixels.std() > 10  # a real picture, not a blank canvas
    assert "inputs (4, 5, 1, 224, 152), targets (4, 3, 1, 224, 152)" in done.stdout


def test_demo_refuses_too_few_days(tmp_path):
    done = subprocess.run([sys.executable, "-m", "sicube", "demo", "--days", "3", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["sicube demo: error: --days must be an integer "
                                                "of at least 8, got 3"]


@pytest.mark.slow
def test_demo_on_a_southern_grid_builds_from_its_mirror(tmp_path):
    out = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "sicube", "demo", "--days", "8", "--step", "8", "--grid", "s6250",
         "--out", str(out), "-q"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    ds = xr.open_zarr(out / "cube.zarr")
    assert "/s6250/netcdf" in ds.attrs["source_base_url"]  # the mirror's URL names the grid
    assert ds[cube.GRID_MAPPING].attrs["epsg_code"] == "EPSG:3412"
    assert ds.sizes["y"] == 166 and ds.sizes["x"] == 158
    assert not ds[cube.POLE_HOLE].values.any()
    pixels = np.asarray(Image.open(out / "day.png").convert("L"))
    assert pixels.std() > 10


@pytest.mark.parametrize("blocked, extra", [("matplotlib", "plot"), ("torch", "torch")])
def test_demo_without_an_extra_refuses_before_any_work(tmp_path, blocked, extra):
    # the maps and the DataLoader batch come last: the missing extra is named before the
    # archive is generated, served and built, not after those minutes
    done = subprocess.run([sys.executable, "-c", BLOCKED_CLI, blocked, "demo", "--days", "8",
                           "--step", "32", "--out", "demo", "-q"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert list(tmp_path.iterdir()) == []  # no demo folder: no archive, download or cube
    assert done.returncode == 2
    assert done.stderr == (f"sicube demo: error: sicube.demo needs the '{extra}' extra "
                           f"({blocked} is not installed): pip install 'sicube[{extra}]'\n")
    assert done.stdout == ""
