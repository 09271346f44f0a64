"""The CLI answers an unfinished cube and faults of the environment with one line and exit 2."""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sicube.cli import main

from .test_cube import FINISH, unfinished_copy
from .test_imports import BLOCKED_CLI

ROI = ["--start", "20240401", "--end", "20240412",
       "--ymin", "100", "--ymax", "140", "--xmin", "20", "--xmax", "60"]


def _one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"sicube {command}: error: "), err
    return err


def _commands(store: Path, out: Path) -> dict[str, list[str]]:
    """Every command that reads a cube, writing (if at all) under `out`."""
    return {
        "plot day": ["plot", "day", "--store", str(store), "--date", "20240403",
                     "-o", str(out / "day.png")],
        "plot mask": ["plot", "mask", "--store", str(store), "-o", str(out / "mask.png")],
        "plot compare": ["plot", "compare", "--store", str(store), "--date", "20240403",
                         "-o", str(out / "compare.png")],
        "roi": ["roi", "--store", str(store), *ROI],
        "explore": ["explore", str(store), "--html", str(out / "x.html"), "--width", "50",
                    "-q"],
        "evaluate": ["evaluate", "--store", str(store), "--start", "20240401",
                     "--end", "20240404", "--space-window", "3", "-q"],
        "mask": ["mask", "--store", str(store), "-o", str(out / "mask.nc")],
        "report": ["report", "--store", str(store), "--html", str(out / "report.html")],
    }


READERS = ["plot day", "plot mask", "plot compare", "roi", "explore", "evaluate", "mask",
           "report"]


@pytest.mark.parametrize("status", ["building", "failed: fill crashed"])
def test_every_reader_refuses_an_unfinished_cube(small_cube, tmp_path, capsys, status):
    path = unfinished_copy(small_cube, tmp_path, status)
    for name, argv in _commands(path, tmp_path).items():
        assert main(argv) == 2, name
        err = _one_error_line(capsys, argv[0])
        assert f"state: {status}" in err and FINISH in err and "--allow-incomplete" in err, err
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob("*.html"))


@pytest.mark.parametrize("name", ["plot day", "plot mask", "roi", "evaluate", "mask"])
def test_allow_incomplete_reads_it_anyway(small_cube, tmp_path, capsys, name):
    path = unfinished_copy(small_cube, tmp_path, "building")
    assert main([*_commands(path, tmp_path)[name], "--allow-incomplete"]) == 0
    out = capsys.readouterr().out
    if name == "roi":
        assert "observed days: 10" in out
    elif name != "evaluate":
        assert "wrote" in out
    else:
        assert out.splitlines()[-1].startswith("best:")


def test_explore_allows_an_unfinished_cube_when_told(small_cube, tmp_path):
    from sicube.datacube import cube
    from sicube.views.plot import explore

    path = unfinished_copy(small_cube, tmp_path, "building")
    with pytest.raises(cube.IncompleteCube):
        explore(path)
    assert explore(path, allow_incomplete=True) is not None


def test_explore_takes_the_store_as_store_or_positionally(monkeypatch, tmp_path, capsys):
    # every other command names its store with --store; the positional form stays accepted
    calls = []

    def save_explorer(store, output, **options):
        calls.append((store, output, options))
        Path(output).write_text("")
        return Path(output)

    monkeypatch.setattr("sicube.views.plot.save_explorer", save_explorer)
    html = str(tmp_path / "x.html")
    for argv in (["--store", "c.zarr"], ["c.zarr"], ["c.zarr", "--store", "c.zarr"]):
        assert main(["explore", *argv, "--html", html, "--width", "60", "-q"]) == 0, argv
    assert len(calls) == 3 and calls[0] == calls[1] == calls[2]
    assert calls[0][0] == "c.zarr" and calls[0][2]["width"] == 60
    capsys.readouterr()

    assert main(["explore", "a.zarr", "--store", "b.zarr", "--html", html]) == 2
    assert "two stores given ('a.zarr' and --store 'b.zarr')" in _one_error_line(capsys,
                                                                                 "explore")
    assert main(["explore", "--html", html]) == 2
    assert "required: --store" in _one_error_line(capsys, "explore")
    assert len(calls) == 3  # neither was run

    with pytest.raises(SystemExit):
        main(["explore", "--help"])
    assert "--store STORE" in capsys.readouterr().out


def _parsers(parser, name="sicube"):
    """`parser` and every (sub-)command's parser under it, by name."""
    import argparse

    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def test_help_explains_every_option_and_shows_zero_defaults(capsys):
    from sicube.cli import build_parser

    parser = build_parser()
    for name, sub in _parsers(parser):
        for action in sub._actions:
            assert action.help, f"{name} {'/'.join(action.option_strings) or action.dest}"
    assert parser.format_usage() == "usage: sicube [-h] [--version] COMMAND ...\n"
    sample = dict(_parsers(parser))["sicube sample"].format_help()
    assert "seed of the generated values (default: 0)" in " ".join(sample.split())


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its size and modification time (to see it untouched)."""
    return {str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("argv", [["roi", *ROI], ["extent"]])
def test_plot_without_the_plot_extra_is_refused_before_any_work(small_cube, tmp_path, argv):
    # without the check the days were counted and the CSV written before the plot failed
    before = _files(small_cube)
    done = subprocess.run([sys.executable, "-c", BLOCKED_CLI, "matplotlib", argv[0],
                           "--store", str(small_cube), *argv[1:], "--csv", "table.csv",
                           "--plot", "figure.png"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert done.returncode == 2
    assert list(tmp_path.iterdir()) == []  # no CSV, no figure
    assert _files(small_cube) == before
    assert done.stderr == (f"sicube {argv[0]}: error: {argv[0]} --plot needs the 'plot' extra "
                           "(matplotlib is not installed): pip install 'sicube[plot]'\n")
    assert done.stdout == ""


def test_summaries_count_one_day_and_one_cell_in_the_singular(tmp_path, capsys):
    from sicube.testing import synthetic_cube

    store = str(synthetic_cube(tmp_path / "one.zarr", n_days=1, missing=()))
    assert main(["extent", "--store", store]) == 0
    assert f"{store}: 1 day 2024-04-01 .. 2024-04-01;" in capsys.readouterr().out
    assert main(["evaluate", "--store", store, "--space-window", "3"]) == 0
    assert "evaluating 1 parameter set on 1 day of 48 x 40 cells" in capsys.readouterr().err
    argv = ["--start", "20240401", "--end", "20240401", "--ymin", "0", "--ymax", "1",
            "--xmin", "13", "--xmax", "14"]  # an ocean cell with no data that day
    assert main(["roi", "--store", store, *argv]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ROI y 0:1, x 13:14 (1 cell) on the 48 x 40"), out
    assert "\n  2024-04-01          1 cell   100.000%\n" in out, out


# --- faults of the environment --------------------------------------------------------------------


@pytest.fixture
def corrupt_cube(small_cube, tmp_path) -> Path:
    path = tmp_path / "corrupt.zarr"
    shutil.copytree(small_cube, path)
    (path / "zarr.json").write_text('{"zarr_format": 3, "node_type": "gro')
    return path


@pytest.mark.parametrize("name", READERS)
def test_a_corrupt_store_is_one_line(corrupt_cube, tmp_path, capsys, name):
    argv = _commands(corrupt_cube, tmp_path)[name]
    assert main(argv) == 2
    assert str(corrupt_cube) in _one_error_line(capsys, argv[0])


def test_info_of_a_corrupt_store_is_one_line(corrupt_cube, capsys):
    assert main(["info", str(corrupt_cube)]) == 2
    assert "not a readable Zarr store" in _one_error_line(capsys, "info")


@pytest.mark.parametrize("name", ["plot day", "roi", "explore", "evaluate", "mask", "report"])
def test_a_store_that_is_a_file_is_one_line(tmp_path, capsys, name):
    path = tmp_path / "cube.zarr"
    path.write_text("not a store")
    argv = _commands(path, tmp_path)[name]
    assert main(argv) == 2
    assert str(path) in _one_error_line(capsys, argv[0])


def _without_root_override() -> list[str]:
    """A command prefix under which permission bits apply (they do not stop root: drop its
    capabilities to override them)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permission bits cannot be tested")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


def _sicube_without_root_override(argv: list[str]) -> subprocess.CompletedProcess:
    """`python -m sicube argv` in a process that permission bits stop."""
    return subprocess.run([*_without_root_override(), sys.executable, "-m", "sicube", *argv],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})


@pytest.mark.parametrize("command", ["info", "roi", "plot day", "evaluate"])
def test_a_store_without_read_permission_is_one_line(small_cube, tmp_path, command):
    store = tmp_path / "locked.zarr"
    shutil.copytree(small_cube, store)
    store.chmod(0o000)
    argv = ["info", str(store)] if command == "info" else _commands(store, tmp_path)[command]
    try:
        done = _sicube_without_root_override(argv)
    finally:
        store.chmod(0o755)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert str(store) in done.stderr and "ermission denied" in done.stderr, done.stderr


def test_mask_output_in_a_read_only_folder_names_the_path(small_cube, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    out = locked / "mask.nc"
    try:
        done = _sicube_without_root_override(["mask", "--store", str(small_cube), "-o", str(out)])
    finally:
        locked.chmod(0o755)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert str(out) in done.stderr and "ermission denied" in done.stderr, done.stderr
    assert not any(locked.iterdir())


@pytest.mark.parametrize("name", ["plot day", "explore", "mask", "report"])
def test_output_below_a_regular_file_is_one_line(small_cube, tmp_path, capsys, name):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    argv = _commands(small_cube, blocker / "sub")[name]
    assert main(argv) == 2
    assert str(blocker) in _one_error_line(capsys, argv[0])


def test_output_in_a_missing_folder_is_one_line_for_mask(small_cube, tmp_path, capsys):
    assert main(["mask", "--store", str(small_cube), "-o", str(tmp_path / "no" / "m.nc")]) == 2
    assert "does not exist" in _one_error_line(capsys, "mask")


def test_roi_csv_unwritable_or_disk_full_is_one_line(small_cube, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["roi", "--store", str(small_cube), *ROI, "--csv", str(blocker / "r.csv")]) == 2
    assert str(blocker) in _one_error_line(capsys, "roi")
    # /dev/full accepts the open and fails every write with ENOSPC, as a full disk does.
    assert main(["roi", "--store", str(small_cube), *ROI, "--csv", "/dev/full"]) == 2
    assert "No space left on device" in _one_error_line(capsys, "roi")


def test_evaluate_csv_on_a_full_disk_is_one_line(small_cube, capsys):
    argv = _commands(small_cube, Path("/unused"))["evaluate"]
    assert main([*argv, "--csv", "/dev/full"]) == 2
    err = _one_error_line(capsys, "evaluate")
    assert "/dev/full" in err and "No space left on device" in err


def test_sample_out_below_a_regular_file_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    argv = ["sample", "--start", "20240401", "--end", "20240402", "--out", str(blocker / "a"),
            "--step", "32", "-q"]
    assert main(argv) == 2
    assert str(blocker) in _one_error_line(capsys, "sample")


def test_info_into_a_closed_pipe_exits_quietly(small_cube):
    """`sicube info cube.zarr | head -0`: the reader has gone before anything is written."""
    process = subprocess.Popen([sys.executable, "-m", "sicube", "info", str(small_cube)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    process.stdout.close()  # before the child has imported anything, let alone printed
    err = process.stderr.read().decode()
    assert process.wait(timeout=300) == 141
    assert err == ""


@pytest.mark.parametrize("where", ["sicube.cli.build_parser", "sicube.settings.apply"])
def test_ctrl_c_while_the_command_loads_is_one_line_and_exit_130(monkeypatch, capsys, where):
    # `build` imports its stage (numba, dask), then zarr, before it runs: seconds a user may cut
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(where, interrupted)
    try:
        code = main(["build", "--start", "20240101", "--end", "20240102", "--store", "c.zarr"])
    except KeyboardInterrupt:  # pytest would stop the whole run on it
        pytest.fail("Ctrl-C while the command loaded escaped main() as a traceback")
    assert code == 130
    assert capsys.readouterr().err == "sicube build: interrupted\n"


def test_the_sicube_process_runs_its_command_with_the_collector_on_and_exits_with_its_code():
    # `sicube.__main__.run` (python -m sicube, the sicube script) pauses the collector only
    # while the command's modules load: a long build must not run without it
    probe = ("import gc, sys\n"
             "from sicube import __main__ as process, cli\n"
             "def command(args):\n"
             "    print(gc.isenabled(), 'sicube.pipeline.build' in sys.modules,\n"
             "          gc.get_freeze_count() > 10_000, flush=True)\n"
             "    return 3\n"
             "cli._run_update = command\n"
             "sys.argv = ['sicube', 'update', '--store', 'no-such-cube']\n"
             "process.run()\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 3, done.stderr
    # the collector is on, and the update's modules were loaded and frozen before it ran
    assert done.stdout.split() == ["True", "True", "True"], done.stdout
    assert gc.isenabled()  # main in this process left its collector alone


def test_build_makes_the_folders_a_new_store_goes_in(archive, tmp_path, capsys):
    store = tmp_path / "runs" / "2024" / "cube.zarr"
    argv = ["build", "--start", "20240401", "--end", "20240403", "--store", str(store),
            "--source", str(archive.root), "-q"]
    assert main(argv) == 0
    assert (store / "zarr.json").is_file() and not store.with_name("cube.zarr.lock").exists()
    capsys.readouterr()
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    argv[argv.index("--store") + 1] = str(blocked / "sub" / "cube.zarr")
    assert main(argv) == 2
    assert "cannot make its folder" in _one_error_line(capsys, "build")
    assert blocked.read_text() == "not a folder"

    # refused for its source: the folders made for the store are gone again, others kept
    empty_source = tmp_path / "empty-source"
    empty_source.mkdir()
    argv[argv.index("--store") + 1] = str(tmp_path / "runs" / "2025" / "q1" / "cube.zarr")
    argv[argv.index("--source") + 1] = str(empty_source)
    assert main(argv) == 2
    assert "no source file" in _one_error_line(capsys, "build")
    assert not (tmp_path / "runs" / "2025").exists() and (tmp_path / "runs" / "2024").is_dir()
