"""Every store-taking command and the datasets on a real S3 server (moto); http:// and
file:// are in tests/test_remote.py.

The server (tests/conftest.py `s3_server`) is moto's standalone HTTP server in its own process
with authentication on; the cube on it must equal a local build of the same days bit for bit.
"""

from __future__ import annotations

import json
import re

import pytest
import s3fs
import xarray as xr
import zarr

from sicube.cli import main
from sicube.datacube import cube
from sicube.datacube.store import open_store
from sicube.errors import BadInput
from tests.conftest import ARCHIVE_START
from tests.test_remote import CHUNKS, FILL, SPAN, _assert_same_arrays, _one_error_line


def _s3_group(server, path: str):
    return zarr.open_group(open_store(f"s3://{server.bucket}/{path}",
                                      storage_options=server.storage_options), mode="r")


@pytest.fixture(scope="module")
def s3_cube(s3_server, archive):
    """s3://bucket/cube.zarr built by the CLI from the archive: the endpoint and credentials
    given as --storage-options (the environment is the other way: see the tests)."""
    url = f"s3://{s3_server.bucket}/cube.zarr"
    code = main(["build", *SPAN, "--store", url, "--source", str(archive.root),
                 f"--chunks={CHUNKS}", *FILL, "-q",
                 "--storage-options", json.dumps(s3_server.storage_options)])
    assert code == 0
    return url


def test_a_cube_built_on_s3_equals_the_local_build(s3_server, s3_cube, small_cube):
    group = _s3_group(s3_server, "cube.zarr")
    assert group.attrs[cube.STATUS] == cube.COMPLETE
    _assert_same_arrays(group, str(small_cube))


def test_open_cube_and_info_on_s3_with_credentials_from_the_environment(
        s3_env, s3_cube, small_cube, capsys):
    ds = cube.open_cube(s3_cube)  # endpoint, key and secret from AWS_* variables
    with xr.open_zarr(str(small_cube)) as local:
        xr.testing.assert_identical(ds[cube.CONC].load(), local[cube.CONC].load())
    assert main(["info", s3_cube]) == 0
    out = capsys.readouterr().out
    assert s3_cube in out and f"{ARCHIVE_START}" in out and "complete" in out


@pytest.mark.slow
def test_mask_plot_roi_evaluate_on_s3_give_what_they_give_locally(
        s3_server, s3_cube, small_cube, tmp_path, capsys):
    import shutil

    options = ["--storage-options", json.dumps(s3_server.storage_options)]
    local_cube = tmp_path / "local-copy" / "cube.zarr"  # named as on S3: plots show the name
    shutil.copytree(small_cube, local_cube)
    for where, store in (("s3", s3_cube), ("local", str(local_cube))):
        out = tmp_path / where
        out.mkdir()
        extra = options if where == "s3" else []
        assert main(["mask", "--store", store, "--output", str(out / "mask.nc"), *extra]) == 0
        for kind, args in (("day", ["--date", "20240403"]), ("mask", []),
                           ("compare", ["--date", "20240405"])):
            assert main(["plot", kind, "--store", store, *args, "-o",
                         str(out / f"{kind}.png"), *extra]) == 0
        capsys.readouterr()
        assert main(["roi", "--store", store, *SPAN, "--ymin=100", "--ymax=160", "--xmin=40",
                     "--xmax=100", "--csv", str(out / "roi.csv"), *extra]) == 0
        assert main(["evaluate", "--store", store, "--hide-fraction=0.05", *extra]) == 0
        assert main(["report", "--store", store, "--html", str(out / "report.html"), "-q",
                     *extra]) == 0
        text = capsys.readouterr().out.replace(store, "STORE").replace(str(out), "OUT")
        (out / "stdout.txt").write_text(text)
    with xr.open_dataset(tmp_path / "s3" / "mask.nc") as a, \
            xr.open_dataset(tmp_path / "local" / "mask.nc") as b:
        xr.testing.assert_equal(a[cube.LAND], b[cube.LAND])
        xr.testing.assert_equal(a[cube.NAN_RATIO], b[cube.NAN_RATIO])
    for name in ("roi.csv",):
        local = (tmp_path / "local" / name).read_text()
        assert (tmp_path / "s3" / name).read_text() == local and local
    for kind in ("day", "mask", "compare"):  # the same pictures, byte for byte
        local = (tmp_path / "local" / f"{kind}.png").read_bytes()
        assert (tmp_path / "s3" / f"{kind}.png").read_bytes() == local, kind
    # the report's size (kB) may differ by the store's name in it; every other line is equal
    out_s3, out_local = ((tmp_path / w / "stdout.txt").read_text().splitlines()
                         for w in ("s3", "local"))
    assert [x for x in out_s3 if "report.html" not in x] == \
        [x for x in out_local if "report.html" not in x]
    # the same page but for the store's name and when the two builds ran
    page_s3, page_local = (
        re.sub(r"<tr><th>build time</th><td>[^<]*</td></tr>", "",
               (tmp_path / w / "report.html").read_text().replace(store, "STORE"))
        for w, store in (("s3", s3_cube), ("local", str(local_cube))))
    assert page_s3 == page_local and page_local.count("<img") > 0


@pytest.mark.slow
def test_update_on_s3_equals_the_same_update_locally(s3_env, archive, tmp_path):
    first = ["--start=20240401", "--end=20240408", "--source", str(archive.root),
             f"--chunks={CHUNKS}", "-q"]
    url = f"s3://{s3_env.bucket}/updated.zarr"  # credentials and endpoint: environment only
    local = str(tmp_path / "updated.zarr")
    for store in (url, local):
        assert main(["build", *first, "--store", store]) == 0
        assert main(["update", "--store", store, "--end=20240412", "--source",
                     str(archive.root), "-q"]) == 0
    group = _s3_group(s3_env, "updated.zarr")
    assert group[cube.RAW].shape[0] == 12
    _assert_same_arrays(group, local)


def test_datasets_read_s3_in_two_dataloader_workers(s3_server, s3_cube, small_cube):
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    from sicube.ml.dataset import SICDataset, SICStream

    params = dict(start_time=20240401, end_time=20240412, input_length=3, pred_length=2,
                  quality_cache=False)
    local = SICDataset(small_cube, **params)
    remote = SICDataset(s3_cube, storage_options=s3_server.storage_options, **params)
    assert len(remote) == len(local) > 0
    want = [tuple(t.clone() for t in b) for b in DataLoader(local, batch_size=2)]
    got = [tuple(t.clone() for t in b) for b in DataLoader(
        remote, batch_size=2, num_workers=2, multiprocessing_context="fork")]
    assert len(got) == len(want)
    for a, b in zip(want, got, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    stream = SICStream(remote, shuffle=False)
    items = list(DataLoader(stream, batch_size=None, num_workers=2,
                            multiprocessing_context="fork"))
    assert len(items) == len(local)
    def as_bytes(items):  # each item's inputs and targets, exactly
        return sorted(b"".join(t.numpy().tobytes() for t in item) for item in items)

    assert as_bytes(items) == as_bytes(local[i] for i in range(len(local)))


@pytest.mark.parametrize("case", ["no bucket", "wrong credentials", "not a cube", "no store"])
def test_bad_s3_stores_are_one_line(s3_server, s3_cube, tmp_path, capsys, case):
    options = dict(s3_server.storage_options)
    store = s3_cube
    expected = {"no bucket": "does not exist", "wrong credentials": "permission denied",
                "not a cube": "not a sicube cube", "no store": "does not exist"}[case]
    if case == "no bucket":
        store = "s3://no-such-bucket/cube.zarr"
    elif case == "wrong credentials":
        options.update(key="AKIAWRONGWRONGWRONG", secret="wrong")
    elif case == "not a cube":
        store = f"s3://{s3_server.bucket}/plain.zarr"
        zarr.open_group(open_store(store, storage_options=options, mode="w"), mode="w")
    else:
        store = f"s3://{s3_server.bucket}/nothing-here.zarr"
    flag = ["--storage-options", json.dumps(options)]
    for argv in (["info", store, *flag],
                 ["mask", "--store", store, "--output", str(tmp_path / "m.nc"), *flag],
                 ["roi", "--store", store, *SPAN, "--ymin=0", "--ymax=9", "--xmin=0",
                  "--xmax=9", *flag],
                 ["evaluate", "--store", store, *flag],
                 ["plot", "mask", "--store", store, "-o", str(tmp_path / "m.png"), *flag],
                 ["report", "--store", store, "--html", str(tmp_path / "r.html"), *flag],
                 ["update", "--store", store, "--end=20240413", *flag]):
        assert main(argv) == 2, argv
        # evaluate takes any Zarr store that has raw values
        want = "no sea_ice_conc_raw" if case == "not a cube" and argv[0] == "evaluate" \
            else expected
        assert want in _one_error_line(capsys, argv[0]), argv
    with pytest.raises(BadInput, match=expected):
        cube.open_cube(store, storage_options=options)


def test_build_into_a_missing_bucket_or_with_wrong_credentials_is_one_line(
        s3_server, archive, capsys):
    for store, options, expected in (
            ("s3://no-such-bucket/cube.zarr", s3_server.storage_options, "does not exist"),
            (f"s3://{s3_server.bucket}/new.zarr",
             {**s3_server.storage_options, "secret": "wrong"}, "permission denied")):
        argv = ["build", *SPAN, "--store", store, "--source", str(archive.root), "-q",
                "--storage-options", json.dumps(options)]
        assert main(argv) == 2
        assert expected in _one_error_line(capsys, "build")


def test_storage_options_must_be_a_json_object(small_cube, capsys):
    for text in ("{endpoint", "[1, 2]"):
        assert main(["info", str(small_cube), "--storage-options", text]) == 2
        assert "--storage-options" in _one_error_line(capsys, "info")


def test_delay_proxy_passes_signed_s3_requests_and_adds_its_latency(s3_server):
    """The benchmark's distant object store: moto behind `testing.delay_proxy`. Signed
    requests (authentication is on) pass unchanged; every answer comes `latency` later."""
    import time

    from sicube.testing import delay_proxy

    direct = s3fs.S3FileSystem(**s3_server.storage_options)
    direct.pipe(f"{s3_server.bucket}/proxy/a.bin", b"x" * 100_000)
    with delay_proxy(s3_server.endpoint, latency=0.2) as served:
        options = {**s3_server.storage_options, "endpoint_url": served.url}
        far = s3fs.S3FileSystem(**options, skip_instance_cache=True)
        started = time.perf_counter()
        assert far.cat(f"{s3_server.bucket}/proxy/a.bin") == b"x" * 100_000
        assert time.perf_counter() - started >= 0.2
        far.pipe(f"{s3_server.bucket}/proxy/b.bin", b"written through the proxy")
        assert sum(served.requests.values()) >= 2
        wrong = s3fs.S3FileSystem(**{**options, "secret": "wrong"}, skip_instance_cache=True)
        with pytest.raises(PermissionError):
            wrong.cat(f"{s3_server.bucket}/proxy/a.bin")
    assert direct.cat(f"{s3_server.bucket}/proxy/b.bin") == b"written through the proxy"
