"""The asv benchmarks (asv_bench/benchmarks) import and run: each setup and time_* once, tiny.

asv itself is not needed: a benchmark is a plain class whose sizes are class attributes, set
small here so that the suite keeps working as the code under it changes.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "asv_bench" / "benchmarks"
TINY = {
    "fill.Fill": {"shape": (3, 20, 24)},
    "items.Items": {"n_days": 8, "shape": (16, 16), "chunks": {"time": 4, "y": 8, "x": 8},
                    "input_length": 2, "pred_length": 1},
    "build.Build": {"start": "2024-01-01", "end": "2024-01-02"},
}


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"asv_benchmarks_{name}",
                                                  BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_benchmark_class_is_covered():
    modules = sorted(p.stem for p in BENCHMARKS.glob("*.py") if p.stem != "__init__")
    assert modules == sorted({key.split(".")[0] for key in TINY})


# fill.Fill compiles every numba kernel (the gufunc too) from cold: the suite's longest test.
SLOW = {"fill.Fill"}


@pytest.mark.parametrize("key", [pytest.param(key, marks=pytest.mark.slow if key in SLOW else ())
                                 for key in sorted(TINY)])
def test_benchmark_runs_once(key, monkeypatch):
    module_name, class_name = key.split(".")
    cls = getattr(_load(module_name), class_name)
    for attr, value in TINY[key].items():
        assert hasattr(cls, attr), attr  # the benchmark still reads this size
        monkeypatch.setattr(cls, attr, value)
    bench = cls()
    timed = [name for name in dir(cls) if name.startswith("time_")]
    assert timed
    bench.setup()
    try:
        for name in timed:
            assert getattr(bench, name)() is None
    finally:
        if hasattr(bench, "teardown"):
            bench.teardown()
