"""Imports run one way and stay light: `import sicube` loads no heavy library, the torch
dataset's spawned workers load no numba or distributed, every public name resolves."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

import sicube

HEAVY = ("dask", "numba", "xarray", "zarr", "torch", "distributed", "matplotlib")
ROOT = Path(__file__).resolve().parents[1]


def _loaded_after(code: str) -> list[str]:
    """The HEAVY modules a fresh interpreter holds after running `code`."""
    probe = (f"{code}\nimport json, sys\n"
             f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.splitlines()[-1])


def test_import_sicube_loads_no_heavy_library():
    assert _loaded_after("import sicube; sicube.__version__; dir(sicube)") == []


def test_the_kernel_imports_the_layout_not_the_reverse():
    # fill imports the flags from cube; cube's xarray loads only when a cube is made or opened
    assert _loaded_after("import sicube.kernels.fill") == ["numba"]
    assert _loaded_after("import sicube.datacube.cube, sys; "
                         "assert 'sicube.kernels.fill' not in sys.modules"
                         ) == []


def test_the_cli_loads_only_the_chosen_commands_stages():
    # every command's arguments import their stage for its defaults; only the chosen one's run
    code = "from sicube import cli\ntry:\n    cli.main({argv!r})\nexcept SystemExit:\n    pass"
    assert _loaded_after(code.format(argv=["--version"])) == []
    assert _loaded_after(code.format(argv=["info", "--help"])) == []
    assert "numba" in _loaded_after(code.format(argv=["evaluate", "--help"]))
    # the build's flags become sicube.params objects: its --help loads no stage
    assert _loaded_after(code.format(argv=["build", "--help"])) == []


def test_the_plan_and_the_parameters_load_no_heavy_library():
    # the build plan is a pure function of parameters that need no numba, dask, zarr, xarray
    assert _loaded_after("import sicube.pipeline.plan, sicube.params") == []
    assert _loaded_after("from sicube import (BadInput, BadSourceFile, DownloadOptions, "
                         "FillParams, IncompleteCube, MissingExtra, QualityRules, "
                         "SicubeError)") == []


def test_training_windows_are_planned_without_torch(tmp_path):
    # the sample plan is pure; making one from a cube and saving it needs no torch at all
    assert _loaded_after("import sicube.ml.sample_plan; from sicube import SamplePlan") == []
    code = (f"from sicube import SamplePlan\n"
            f"from sicube.testing import synthetic_cube\n"
            f"path = synthetic_cube({str(tmp_path / 'cube.zarr')!r}, start=20240401, "
            f"n_days=8, missing=[3])\n"
            f"plan = SamplePlan.from_cube(path, 20240401, 20240408, 2, 1, patch_size=16, "
            f"variables=['filled', 'day_of_year'], normalize={{'filled': (0.5, 0.25)}}, "
            f"max_filled_fraction=0.9, quality_cache=False)\n"
            f"assert SamplePlan.from_json(plan.to_json()) == plan and len(plan) > 0")
    loaded = _loaded_after(code)
    assert "zarr" in loaded  # it did read the cube
    assert "torch" not in loaded


def test_a_build_on_threads_never_imports_distributed(tmp_path):
    # importing distributed costs ~0.7 s, which every daily update would pay; dask imports it
    # to resolve a scheduler given by name, so the build hands it the scheduler functions
    code = (f"import sicube, sicube.archive.synthetic\n"
            f"sicube.archive.synthetic.write_archive({str(tmp_path / 'src')!r}, "
            f"'2024-01-01', '2024-01-04', "
            f"step=32, missing_days=[])\n"
            f"sicube.build('2024-01-01', '2024-01-04', {str(tmp_path / 'cube.zarr')!r}, "
            f"source={str(tmp_path / 'src')!r}, progress=False)")
    loaded = _loaded_after(code)
    assert "zarr" in loaded and "numba" in loaded  # it did build
    assert "distributed" not in loaded


def test_a_one_day_update_process_loads_only_what_it_uses(tmp_path):
    # issue 22: a cron job's `sicube update` pays for every import; it fills on its own
    # threads (no dask: dask.array loads xarray, pandas and scipy.sparse), reads a folder
    # (no downloader) and draws nothing
    from sicube.archive.synthetic import write_archive
    from sicube.cli import main

    write_archive(tmp_path / "src", "2024-01-01", "2024-01-10", step=32, missing_days=[],
                  progress=False)
    assert main(["build", "--start", "20240101", "--end", "20240109", "--store",
                 str(tmp_path / "cube.zarr"), "--source", str(tmp_path / "src"), "-q"]) == 0
    unused = ("dask", "xarray", "pandas", "distributed", "torch", "matplotlib",
              "sicube.archive.download", "sicube.views.plot", "sicube.analysis.extent")
    probe = (f"import sys\nfrom sicube.cli import main\n"
             f"code = main(['update', '--store', {str(tmp_path / 'cube.zarr')!r}, "
             f"'--end', '20240110', '-q'])\n"
             f"print(code, [m for m in {unused!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    assert out.splitlines()[-1] == "0 []"  # it did update (code 0), and loaded none of them
    import zarr

    assert zarr.open_group(tmp_path / "cube.zarr", mode="r")["time"].shape == (10,)


def test_dataset_in_a_spawned_worker_loads_no_numba_or_distributed(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent("""
        import multiprocessing, sys

        def probe(_):
            import sicube.ml.dataset  # noqa: F401  what a DataLoader worker unpickles
            return [m for m in ("numba", "distributed", "torch") if m in sys.modules]

        if __name__ == "__main__":
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                print(pool.map(probe, [0])[0])
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "['torch']"  # it did import the dataset, and nothing else heavy


def test_every_public_name_resolves_to_its_object():
    assert sorted(sicube.__all__) == sorted(sicube._EXPORTS)
    assert set(sicube.__all__) <= set(dir(sicube))
    import importlib

    shadowed = ("build", "download", "extent", "climatology")  # functions named like modules
    for module in set(sicube._EXPORTS.values()):  # importing a module never shadows a name
        importlib.import_module(module)

    for name in sicube.__all__:
        value = getattr(sicube, name)
        assert not isinstance(value, types.ModuleType), name
        assert value.__module__ == sicube._EXPORTS[name], name
    assert all(getattr(sicube, name).__name__ == name for name in shadowed)
    from sicube import BadInput, FillParams, QualityRules, SicubeError  # issue 21

    assert issubclass(BadInput, SicubeError) and FillParams().sigma > 0 and QualityRules().k > 0
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        sicube.nothing  # noqa: B018


def test_version_is_written_once_and_shown_by_the_cli():
    project = (ROOT / "pyproject.toml").read_text()  # (tomllib is not in Python 3.10)
    assert 'dynamic = ["version"]' in project
    assert 'version = { attr = "sicube._version.__version__" }' in project
    out = subprocess.run([sys.executable, "-m", "sicube", "--version"], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == f"sicube {sicube.__version__}"


# --- optional extras: a missing one is named in one line ------------------------------------

BLOCKED_CLI = """
import sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None  # as if not installed: importing it fails
from sicube.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("blocked, argv, user, extra, missing", [
    ("matplotlib", ["plot", "mask", "--mask", "m.nc", "-o", "m.png"], "sicube.views.plot", "plot",
     "matplotlib"),
    ("hvplot", ["explore", "cube.zarr", "--html", "e.html"], "sicube.explore", "plot",
     "hvplot"),
])
def test_a_missing_extra_is_one_line_and_exit_code_2(tmp_path, blocked, argv, user, extra,
                                                     missing):
    run = subprocess.run([sys.executable, "-c", BLOCKED_CLI, blocked, *argv], cwd=tmp_path,
                         capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr == (f"sicube {argv[0]}: error: {user} needs the '{extra}' extra "
                          f"({missing} is not installed): pip install 'sicube[{extra}]'\n")
    assert list(tmp_path.iterdir()) == []  # refused before writing anything


def test_the_dataset_without_torch_names_the_torch_extra():
    code = """
import sys
sys.modules["torch"] = None
import sicube
from sicube.errors import MissingExtra
sicube.build, sicube.open_cube  # the builder does not need torch
try:
    sicube.SICDataset
except MissingExtra as err:
    print(isinstance(err, ImportError), err)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out == ("True sicube.ml.dataset needs the 'torch' extra (torch is not installed): "
                   "pip install 'sicube[torch]'\n")


def test_the_extras_cover_what_the_optional_parts_import():
    project = (ROOT / "pyproject.toml").read_text()
    assert 'torch = ["torch>=2.2"]' in project
    assert 'plot = ["matplotlib>=3.7", "hvplot>=0.10", "datashader>=0.16"]' in project
    assert 's3 = ["s3fs>=2024.2", "aiobotocore>=3.10"]' in project
    assert 'icechunk = ["icechunk>=1.1"]' in project
    assert 'all = ["sicube[torch,plot,s3,icechunk]"]' in project
    assert '"sicube[all]",' in project.split("test = [")[1].split("\n]")[0]
    core = project.split("dependencies = [")[1].split("\n]")[0]
    assert not {"torch", "matplotlib", "hvplot", "datashader", "s3fs", "icechunk"} & set(
        line.strip().strip('",').split(">")[0].split("[")[0] for line in core.splitlines())


def test_the_analysis_layer_imports_no_view():
    # views -> analysis, never the reverse (issue 21); the one exception is the deprecated
    # `extent(plot=...)`, which imports the view lazily inside its own small function
    import ast

    found = set()
    for path in sorted((ROOT / "sicube" / "analysis").glob("*.py")):
        tree = ast.parse(path.read_text())
        functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
        for node in ast.walk(tree):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom) else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            if any(name.startswith("sicube.views") for name in names):
                inside = [f.name for f in functions if f.lineno <= node.lineno <= f.end_lineno]
                found.add((path.name, inside[-1] if inside else "<module>"))
    assert found == {("extent.py", "_deprecated_plot")}
