"""Fill-quality scoring: which cells are hidden, the scores, and `python -m sicube evaluate`."""

from __future__ import annotations

import csv

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from sicube.analysis.evaluate import evaluate_fill, hide_mask
from sicube.cli import main
from sicube.errors import BadInput
from sicube.kernels.fill import gaussian_fill


def smooth_days(nt=10, ny=40, nx=48, seed=0):
    """A smooth drifting field with a land block and random gaps, in percent."""
    rng = np.random.default_rng(seed)
    t, y, x = np.meshgrid(np.arange(nt), np.arange(ny), np.arange(nx), indexing="ij")
    a = (50 + 40 * np.sin(y / 9.0 + 0.2 * t) * np.cos(x / 11.0)).astype(np.float32)
    land = np.zeros((ny, nx), bool)
    land[:10, :12] = True
    a[:, land] = np.nan
    a[rng.random(a.shape) < 0.2] = np.nan
    return a, land


def test_hides_the_asked_share_of_observed_ocean_only():
    a, land = smooth_days(nt=20, ny=80, nx=96)
    full = tuple(slice(0, n) for n in a.shape)
    for stripes in (True, False):
        hidden = hide_mask(a.shape, full, 0.2, stripes, seed=3)
        assert abs(hidden.mean() - 0.2) < 0.02
    with_stripes = hide_mask(a.shape, full, 0.2, True, seed=3)
    assert not np.array_equal(with_stripes, hide_mask(a.shape, full, 0.2, False, seed=3))
    assert not np.array_equal(with_stripes, hide_mask(a.shape, full, 0.2, True, seed=4))
    # Stripes: whole runs of neighbours are hidden together, unlike scattered cells.
    runs = (with_stripes[:, :, 1:] & with_stripes[:, :, :-1]).mean()
    assert runs > 2 * 0.2**2
    rows = evaluate_fill(a, [{}], hide_fraction=0.2, seed=3, land_mask=land)
    ocean_observed = (~np.isnan(a) & ~land[None]).sum()
    assert rows[0]["n_hidden"] == (with_stripes & ~np.isnan(a) & ~land[None]).sum()
    assert abs(rows[0]["n_hidden"] / ocean_observed - 0.2) < 0.03


def test_a_part_hides_what_the_whole_hides():
    shape = (6, 30, 40)
    whole = hide_mask(shape, tuple(slice(0, n) for n in shape), 0.3, True, seed=1)
    part = hide_mask(shape, (slice(2, 5), slice(7, 30), slice(0, 13)), 0.3, True, seed=1)
    np.testing.assert_array_equal(part, whole[2:5, 7:30, 0:13])


def test_scores_are_the_errors_on_the_hidden_cells():
    a, land = smooth_days()
    params = {"time_window": 2, "space_window": 4, "alpha": 5.0, "sigma": 2.0}
    row = evaluate_fill(a, [params], hide_fraction=0.15, seed=7, land_mask=land)[0]
    hidden = hide_mask(a.shape, tuple(slice(0, n) for n in a.shape), 0.15, True, 7)
    hidden &= ~np.isnan(a) & ~land[None]
    filled = gaussian_fill(np.where(hidden, np.nan, a), **params, land_mask=land)
    err = (filled - a.astype(np.float64))[hidden & ~np.isnan(filled)]
    assert row["n_hidden"] == hidden.sum() and row["n_filled"] == err.size
    assert row["rmse"] == pytest.approx(np.sqrt(np.mean(err**2)))
    assert row["mae"] == pytest.approx(np.mean(np.abs(err)))
    assert row["bias"] == pytest.approx(np.mean(err))
    assert {**row, **params} == row  # the parameters are in the row
    assert row["method"] == "gaussian" and row["max_gap"] == 5


def test_constant_field_is_filled_back_exactly():
    a = np.full((5, 20, 20), 42.0, np.float32)
    row = evaluate_fill(a, [{"sigma": 3.0}], hide_fraction=0.3)[0]
    assert row["n_filled"] == row["n_hidden"] > 0
    assert row["rmse"] < 1e-4 and abs(row["bias"]) < 1e-4


def test_better_parameters_score_better():
    """On a smooth field a narrow kernel beats a very wide, time-blind one."""
    a, land = smooth_days(nt=8)
    good, bad = evaluate_fill(
        a,
        [{"sigma": 1.5, "alpha": 15.0}, {"sigma": 30.0, "alpha": 0.0, "space_window": 12}],
        land_mask=land,
    )
    assert good["rmse"] < bad["rmse"]


def test_dask_and_numpy_give_the_same_scores():
    a, land = smooth_days()
    sets = [{}, {"method": "hybrid", "max_gap": 2}]
    want = evaluate_fill(a, sets, land_mask=land, seed=2)
    for chunks in [(3, 16, 20), (10, 7, 48)]:
        got = evaluate_fill(da.from_array(a, chunks=chunks), sets, land_mask=land, seed=2)
        for g, w in zip(got, want, strict=True):
            assert g["n_hidden"] == w["n_hidden"] and g["n_filled"] == w["n_filled"]
            assert g["rmse"] == pytest.approx(w["rmse"], rel=1e-9)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"parameter_sets": []}, "parameter_sets"),
        ({"parameter_sets": {"alpha": 1.0}}, "parameter_sets"),
        ({"parameter_sets": [{"beta": 1.0}]}, "beta"),
        ({"parameter_sets": [{"sigma": -1.0}]}, "sigma"),
        ({"parameter_sets": [{"method": "kriging"}]}, "method"),
        ({"hide_fraction": 0.0}, "hide_fraction"),
        ({"hide_fraction": 1.0}, "hide_fraction"),
        ({"seed": -1}, "seed"),
        ({"land_mask": np.zeros((3, 3), bool)}, "land_mask"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, name):
    a, _ = smooth_days(nt=3, ny=8, nx=8)
    args = {"parameter_sets": [{}], **kwargs}
    with pytest.raises(BadInput, match=name):
        evaluate_fill(a, **args)


# --- the command --------------------------------------------------------------------------------


@pytest.fixture
def cube(tmp_path):
    a, land = smooth_days(nt=10)
    ny, nx = land.shape
    ds = xr.Dataset(
        {
            "sea_ice_conc_raw": (("time", "y", "x"), a),
            "land_mask": (("y", "x"), land.astype(np.uint8)),
        },
        coords={
            "time": pd.date_range("2024-03-01", periods=10),
            "y": np.arange(ny) * 3125.0,
            "x": np.arange(nx) * 3125.0,
        },
    )
    path = tmp_path / "c.zarr"
    ds.to_zarr(path)
    return path, a, land


def test_evaluate_command_prints_sorted_table_and_best(cube, tmp_path, capsys):
    path, a, land = cube
    out_csv = tmp_path / "scores.csv"
    code = main(
        [
            "evaluate",
            "--store",
            str(path),
            "--alpha",
            "5,15",
            "--sigma",
            "2,30",
            "--space-window",
            "4",
            "--seed",
            "1",
            "--csv",
            str(out_csv),
            "-q",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    with open(out_csv) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    rmse = [float(r["rmse"]) for r in rows]
    assert rmse == sorted(rmse)
    want = evaluate_fill(
        a,
        [{"alpha": float(rows[0]["alpha"]), "sigma": float(rows[0]["sigma"]), "space_window": 4}],
        seed=1,
        land_mask=land,
    )[0]
    assert float(rows[0]["rmse"]) == pytest.approx(want["rmse"])
    assert int(rows[0]["n_hidden"]) == want["n_hidden"]  # the cube's land mask was used
    best = [line for line in out.splitlines() if line.startswith("best:")]
    assert len(best) == 1 and f"sigma={float(rows[0]['sigma']):g}" in best[0]
    assert out.count("gaussian") == 5  # four table rows and the best line


def test_evaluate_command_takes_a_span(cube, capsys):
    path, a, land = cube
    assert (
        main(["evaluate", "--store", str(path), "--start", "20240303", "--end", "2024-03-06", "-q"])
        == 0
    )
    want = evaluate_fill(a[2:6], [{}], land_mask=land)[0]
    assert f"over {want['n_filled']} of {want['n_hidden']} hidden cells" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--store", "{missing}"], "does not exist"),
        (["--store", "{empty}"], "not a readable Zarr store"),
        (["--store", "{novar}"], "no sea_ice_conc_raw"),
        (["--store", "{cube}", "--alpha", "5,x"], "--alpha"),
        (["--store", "{cube}", "--sigma", "0"], "sigma"),
        (["--store", "{cube}", "--time-window", "-1"], "time_window"),
        (["--store", "{cube}", "--method", "spline"], "method"),
        (["--store", "{cube}", "--hide-fraction", "1.5"], "hide_fraction"),
        (["--store", "{cube}", "--start", "20240310", "--end", "20240301"], "before start"),
        (["--store", "{cube}", "--start", "2024-13-01"], "start"),
        (["--store", "{cube}", "--start", "20250101"], "no day"),
    ],
)
def test_evaluate_command_bad_input_is_one_line_and_exit_2(cube, tmp_path, capsys, extra, message):
    path, _, _ = cube
    (tmp_path / "empty").mkdir()
    xr.Dataset({"other": (("y",), np.zeros(3))}).to_zarr(tmp_path / "novar.zarr")
    names = {
        "missing": tmp_path / "nope.zarr",
        "empty": tmp_path / "empty",
        "novar": tmp_path / "novar.zarr",
        "cube": path,
    }
    argv = ["evaluate", "-q", *[e.format(**names) for e in extra]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("sicube evaluate: error:") and message in err


def test_evaluate_command_help_runs():
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "sicube", "evaluate", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "--hide-fraction" in done.stdout


def test_the_grid_of_sets_is_scored_by_the_api_and_printed_by_the_cli(cube):
    # the CLI only turns the comma lists into a grid: expanding, scoring and sorting it, and
    # the table's text, are the API's (issue 21)
    from sicube.analysis.evaluate import evaluate_grid, format_scores, parameter_grid

    sets = parameter_grid({"method": ["gaussian", "hybrid"], "sigma": [2.0, 30.0],
                           "max_gap": [1, 3]})
    # a Gaussian set is not repeated for each max_gap; each hybrid set is
    assert [(s["method"], s["sigma"], s["max_gap"]) for s in sets] == [
        ("gaussian", 2.0, 1), ("gaussian", 30.0, 1), ("hybrid", 2.0, 1), ("hybrid", 2.0, 3),
        ("hybrid", 30.0, 1), ("hybrid", 30.0, 3)]
    path, a, land = cube
    said = []
    rows = evaluate_grid(str(path), {"sigma": [30.0, 2.0], "space_window": [4]}, seed=1,
                         say=said.append)
    assert said[0] == "evaluating 2 parameter sets on 10 days of 40 x 48 cells"
    assert len(said) == 3 and [r["rmse"] for r in rows] == sorted(r["rmse"] for r in rows)
    want = evaluate_fill(a, [{"sigma": rows[0]["sigma"], "space_window": 4}], seed=1,
                         land_mask=land)[0]
    assert rows[0]["rmse"] == pytest.approx(want["rmse"])
    lines = format_scores(rows)
    assert len(lines) == 4 and lines[0].split()[0] == "method"
    assert lines[-1].startswith("best: method=gaussian")
