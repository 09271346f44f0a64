"""Store helpers of sicube.datacube.cube."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from sicube.datacube import cube


def test_for_writing_stores_chunks_that_hold_only_the_fill_value(tmp_path):
    array = zarr.create_array(tmp_path / "a.zarr", shape=(4, 4), chunks=(2, 4), dtype="f4",
                              fill_value=np.nan)
    array[:2] = np.nan  # zarr's default: an all-fill chunk is not stored
    cube.for_writing(array)[2:] = np.nan
    assert sorted(p.name for p in (tmp_path / "a.zarr" / "c").iterdir()) == ["1"]
    np.testing.assert_array_equal(array[:], np.full((4, 4), np.nan, np.float32))


# --- a cube's state: readers refuse an unfinished cube -------------------------------------------

FINISH = "sicube build --start 20240401 --end 20240412 --store cube.zarr --source archive"


def set_attrs(store, **attrs) -> None:
    """Change a cube's group attributes and re-consolidate, as the builder does at a status
    change."""
    import warnings

    group = zarr.open_group(str(store), mode="r+", use_consolidated=False)
    group.attrs.update(attrs)
    with warnings.catch_warnings():  # zarr: consolidated metadata is not in the v3 spec
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(store))


def unfinished_copy(small_cube, tmp_path, status: str = "building", **attrs):
    """A copy of the built small cube whose state says `status`, finish command set."""
    import shutil

    path = tmp_path / "unfinished.zarr"
    shutil.copytree(small_cube, path)
    set_attrs(path, **{cube.STATUS: status, cube.FINISH: FINISH, **attrs})
    return path


@pytest.mark.parametrize("status", ["building", "failed: fill crashed"])
def test_open_cube_refuses_an_unfinished_cube_with_its_state_and_finish(small_cube, tmp_path,
                                                                        status):
    path = unfinished_copy(small_cube, tmp_path, status)
    with pytest.raises(cube.IncompleteCube) as caught:
        cube.open_cube(path)
    message = str(caught.value)
    assert "\n" not in message and f"state: {status}" in message and FINISH in message
    assert "--allow-incomplete" in message
    ds = cube.open_cube(path, allow_incomplete=True)
    assert ds.sizes["time"] == 12
    assert cube.cube_status(ds.attrs) == status


def test_a_built_cube_opens_and_is_complete(small_cube):
    ds = cube.open_cube(small_cube)
    assert cube.cube_status(ds.attrs) == cube.COMPLETE


def test_the_state_is_read_live_not_from_a_stale_consolidated_copy(small_cube, tmp_path):
    path = unfinished_copy(small_cube, tmp_path, cube.COMPLETE)
    assert cube.open_cube(path)
    # A status change without re-consolidation (a builder killed between the two writes).
    group = zarr.open_group(str(path), mode="r+")
    group.attrs[cube.STATUS] = cube.BUILDING
    with pytest.raises(cube.IncompleteCube, match="state: building"):
        cube.open_cube(path)


def test_a_cube_whose_fill_crashed_is_refused(archive, tmp_path, monkeypatch):
    """The real builder stopped after ingest (its fill raises): the cube holds no filled
    values, and every reader says so instead of serving NaN."""
    import importlib

    from sicube.analysis.report import format_info, info
    from sicube.ml.dataset import SICDataset
    from sicube.pipeline.build import build

    from .conftest import ARCHIVE_END, ARCHIVE_START, SMALL_CUBE_CHUNKS

    def crash(*args, **kwargs):
        raise RuntimeError("fill crashed")

    builder = importlib.import_module("sicube.pipeline.fill_stage")  # where the fill runs
    monkeypatch.setattr(builder, "fill_fraction_block", crash)
    path = tmp_path / "crashed.zarr"
    with pytest.raises(RuntimeError, match="fill crashed"):
        build(ARCHIVE_START, ARCHIVE_END, path, source=archive.root, chunks=SMALL_CUBE_CHUNKS,
              progress=False)
    status = cube.cube_status(zarr.open_group(str(path), mode="r").attrs)
    assert status != cube.COMPLETE
    with pytest.raises(cube.IncompleteCube, match=f"state: {status}"):
        cube.open_cube(path)
    with pytest.raises(cube.IncompleteCube, match=f"state: {status}"):
        SICDataset(path, ARCHIVE_START, ARCHIVE_END, 2, 1, quality_cache=False)
    ds = cube.open_cube(path, allow_incomplete=True)
    assert np.isnan(ds[cube.CONC].values).all()  # what a reader would have been served
    assert np.isfinite(ds[cube.RAW].values).any()  # the ingest did run
    first = format_info(info(path))[0]
    assert first.startswith(f"{path}: {status} - unfinished; finish with:")


@pytest.mark.parametrize("damage", ["corrupt", "file"])
def test_an_unreadable_store_is_one_line_of_bad_input(small_cube, tmp_path, damage):
    import shutil

    from sicube.errors import BadInput

    path = tmp_path / "damaged.zarr"
    if damage == "corrupt":
        shutil.copytree(small_cube, path)
        (path / "zarr.json").write_text("{ not json")
    else:
        path.write_text("a file, not a store")
    with pytest.raises(BadInput) as caught:
        cube.open_cube(path)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)
    assert not cube.is_cube(path)
