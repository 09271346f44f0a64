"""sicube.datacube.store's write helpers: a local file or folder written whole or not at all."""

from __future__ import annotations

import pytest

from sicube.datacube.store import atomic_file, atomic_folder


class DiskFull(OSError):
    """A write that fails half way (a full disk, a library's error)."""


def test_atomic_file_replaces_the_target_only_when_the_write_finished(tmp_path):
    target = tmp_path / "page.html"
    target.write_text("old")
    with atomic_file(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_text("new")
        assert target.read_text() == "old"  # not yet: the body has not returned
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["page.html"]


@pytest.mark.parametrize("error", [DiskFull, KeyboardInterrupt])
def test_a_failed_or_interrupted_file_write_leaves_no_temp_and_the_old_target(tmp_path,
                                                                              error):
    target = tmp_path / "mask.nc"
    target.write_bytes(b"old")
    with pytest.raises(error), atomic_file(target) as tmp:
        tmp.write_bytes(b"half")
        raise error()
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.nc"]
    with pytest.raises(error), atomic_file(tmp_path / "new.nc") as tmp:
        tmp.write_bytes(b"half")
        raise error()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.nc"]  # no new.nc, no temp


def test_atomic_folder_is_all_or_nothing(tmp_path):
    target = tmp_path / "clim.zarr"
    with atomic_folder(target) as tmp:
        (tmp / "sub").mkdir(parents=True)
        (tmp / "sub" / "c").write_text("1")
        assert not target.exists()
    assert (target / "sub" / "c").read_text() == "1"
    with pytest.raises(KeyboardInterrupt), atomic_folder(target, replace=True) as tmp:
        tmp.mkdir()
        (tmp / "d").write_text("2")
        raise KeyboardInterrupt
    assert (target / "sub" / "c").read_text() == "1" and not (target / "d").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clim.zarr"]
    with atomic_folder(target, replace=True) as tmp:
        tmp.mkdir()
        (tmp / "d").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["d"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clim.zarr"]


def test_store_bytes_counts_every_file_below_a_local_store_as_fsspec_does(tmp_path):
    import fsspec

    from sicube.datacube.cube import store_bytes

    store = tmp_path / "cube.zarr"
    (store / "a" / "c" / "0").mkdir(parents=True)
    (store / "zarr.json").write_bytes(b"x" * 123)
    (store / "a" / "zarr.json").write_bytes(b"y" * 45)
    (store / "a" / "c" / "0" / "0").write_bytes(b"z" * 6789)
    assert store_bytes(store) == 123 + 45 + 6789 == fsspec.filesystem("file").du(str(store))
    memory = fsspec.filesystem("memory")
    memory.pipe("/bytes-test.zarr/zarr.json", b"q" * 77)
    memory.pipe("/bytes-test.zarr/a/c/0", b"r" * 11)
    assert store_bytes("memory://bytes-test.zarr") == 88
    assert store_bytes(tmp_path / "absent.zarr") == 0
