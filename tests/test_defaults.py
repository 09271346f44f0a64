"""Each default has one home (issue 14): a grep of the tree, and `--help` showing them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sicube.archive.download import DownloadOptions
from sicube.cli import main
from sicube.errors import BadInput
from sicube.kernels.fill import FillParams
from sicube.pipeline.mask import DEFAULT_THRESHOLD

ROOT = Path(__file__).resolve().parent.parent
# Where defaults are used: the package, the shared fixtures, the benchmarks and tools. A test
# that passes a value of its own is not a default; benchmarks/original.py is the original
# toolbox's code (the baseline) and keeps its own.
PYTHON_FILES = sorted([*(ROOT / "sicube").glob("**/*.py"), ROOT / "tests" / "conftest.py",
                       *(ROOT / "benchmarks").glob("bench_*.py"), *(ROOT / "tools").glob("*.py")])

# A name followed by `=`, `:` (a signature's or a dict's) or `default=`, then the value.
_ASSIGNED = r"""(?:["']?{name}["']?\s*(?::\s*\w+\s*)?[=:]\s*|--{flag}["'].*default=["']?)"""


def _literal(name: str, value: str) -> re.Pattern:
    """`name` (or its DEFAULT_NAME constant, or its --name option) given `value`."""
    names = f"(?:{name}|DEFAULT_{name.upper()})"
    head = _ASSIGNED.format(name=names, flag=name.replace("_", "-"))
    return re.compile(head + re.escape(value) + r"(?:\.0)?\b(?![.\d])")


OWNED = [
    # (name, value, the one file that may write it; None: no file)
    ("time_window", "3", "sicube/params.py"),
    ("space_window", "7", "sicube/params.py"),
    ("alpha", "15", "sicube/params.py"),
    ("sigma", "7", "sicube/params.py"),
    ("max_gap", "5", "sicube/kernels/fill.py"),
    ("MASK_THRESHOLD", "0.85", "sicube/params.py"),
    ("threshold", "0.85", None),  # mask.DEFAULT_THRESHOLD is params.MASK_THRESHOLD
    ("mask_threshold", "0.85", None),  # its home is params.MASK_THRESHOLD
    ("concurrency", "16", "sicube/params.py"),
    ("retries", "4", "sicube/params.py"),
    ("timeout", "60", "sicube/params.py"),  # (the original's urlopen in bench_download too)
    ("backoff", "0.5", "sicube/params.py"),
    ("backoff_max", "30", "sicube/params.py"),
]


@pytest.mark.parametrize(("name", "value", "home"), OWNED, ids=[o[0] for o in OWNED])
def test_each_default_is_written_once(name, value, home):
    pattern = _literal(name, value)
    found = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
             for p in PYTHON_FILES
             for i, line in enumerate(p.read_text().splitlines(), 1)
             if pattern.search(line) and "urlopen(" not in line]
    if home is None:
        assert not found, "\n".join(found)
    else:
        assert len(found) == 1 and found[0].startswith(home + ":"), "\n".join(found)


FACTS = [
    # (a fact's definition or use as a literal, the one file that may hold it; None: no file)
    (r"^OK, MISSING, FAILED = ", "sicube/params.py"),  # the day status strings
    (r"^SUSPICIOUS_POLICIES = ", "sicube/params.py"),
    (r"choices=\[\"missing\"|suspicious\w* == \"missing\"|suspicious\w*: str = \"missing\"",
     None),
    (r"^DEFAULT_GRID = \"n3125\"", "sicube/params.py"),
    (r"(?:grid: str = |default=|or )\"n3125\"", None),  # a default grid typed again
    (r"^EXTENT_THRESHOLD(?:_PERCENT)? = ", "sicube/params.py"),
    (r">= (?:area\.)?EXTENT_THRESHOLD\b", "sicube/kernels/area.py"),  # the extent rule
    (r"^DAY_QUALITY = ", "sicube/datacube/cube.py"),
    (r"^_LAND_GRID = ", "sicube/archive/products.py"),  # the shipped-land lookup
    (r"def shipped_land\(", "sicube/archive/products.py"),
    (r"^(?:class (?:FillParams|QualityRules|DownloadOptions)\b|MASK_THRESHOLD = )",
     "sicube/params.py"),
]


@pytest.mark.parametrize(("pattern", "home"), FACTS, ids=[str(i) for i in range(len(FACTS))])
def test_each_fact_is_written_once(pattern, home):
    found = {f"{p.relative_to(ROOT)}" for p in PYTHON_FILES
             for line in p.read_text().splitlines() if re.search(pattern, line)}
    assert found == ({home} if home else set()), pattern


def test_the_grep_finds_what_it_looks_for():
    """The patterns catch the spellings that the defaults had before they got one home."""
    assert _literal("space_window", "7").search("    space_window: int = 7,")
    assert _literal("sigma", "7").search('{"time_window": 3, "sigma": 7.0}')
    assert _literal("sigma", "7").search('parser.add_argument("--sigma", type=float, default=7.0,')
    assert _literal("backoff", "0.5").search("timeout: float = 60.0, backoff: float = 0.5,")
    assert not _literal("sigma", "7").search("sigma=0.75")
    assert not _literal("space_window", "7").search("space_window=17")
    assert _literal("max_gap", "5").search("DEFAULT_MAX_GAP = 5")
    option = '"--mask-threshold", type=float, default=0.85,'
    assert _literal("mask_threshold", "0.85").search(option)


def test_help_shows_every_default(capsys):
    for command in ("build", "update", "download", "check", "evaluate", "mask", "sample",
                    "mirror", "roi"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        if command == "build":
            p = FillParams()
            for shown in (f"days (default: {p.time_window})", f"(default: {p.sigma})",
                          f"(default: {DEFAULT_THRESHOLD})"):
                assert shown in text
        if command in ("download", "check"):
            o = DownloadOptions()
            for shown in (o.concurrency, o.retries, o.timeout, o.backoff):
                assert f"(default: {shown})" in text


def test_fill_params_check_and_round_trip():
    p = FillParams(time_window=2, sigma=3)
    assert p.sigma == 3.0 and isinstance(p.sigma, float)
    assert FillParams.from_dict(p.to_dict()) == p
    with pytest.raises(BadInput, match="sigma"):
        FillParams(sigma=0)
    with pytest.raises(BadInput, match="bogus"):
        FillParams.from_dict({"bogus": 1})
    with pytest.raises(AttributeError):
        p.sigma = 1.0  # frozen


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"concurrency": 0}, "concurrency"), ({"retries": -1}, "retries"),
    ({"timeout": 0}, "timeout"), ({"backoff": -1.0}, "backoff"),
    ({"backoff_max": float("nan")}, "backoff_max"), ({"retries": True}, "retries"),
])
def test_download_options_name_a_bad_value(kwargs, name):
    with pytest.raises(BadInput, match=name):
        DownloadOptions(**kwargs)
