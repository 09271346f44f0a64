"""Shared fixtures: a small generated archive (real coastlines, missing days)."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sicube.archive.synthetic import Archive, write_archive
from sicube.kernels.fill import FillParams
from sicube.pipeline.mask import DEFAULT_THRESHOLD
from sicube.testing import wait_for_port

ARCHIVE_START = dt.date(2024, 4, 1)
ARCHIVE_END = dt.date(2024, 4, 12)
ARCHIVE_MISSING = [dt.date(2024, 4, 5), dt.date(2024, 4, 6)]
ARCHIVE_STEP = 16  # 224 x 152 cells: small, still the real grid and coastlines


@pytest.fixture(scope="session")
def archive(tmp_path_factory) -> Archive:
    """Twelve days of sample files on a coarse grid, 5 and 6 April missing."""
    root = tmp_path_factory.mktemp("archive")
    return write_archive(root, ARCHIVE_START, ARCHIVE_END, step=ARCHIVE_STEP,
                         missing_days=ARCHIVE_MISSING, seed=3)


# --- small_cube: the real builder over the archive ----------------------------------------------

SMALL_CUBE_CHUNKS = {"time": 4, "y": 64, "x": 64}  # several chunks on every axis
SMALL_CUBE_MASK_THRESHOLD = DEFAULT_THRESHOLD
SMALL_CUBE_FILL = FillParams().to_dict()


@pytest.fixture(scope="session")
def small_cube(archive, tmp_path_factory):
    """Path of a cube built by `sicube.build` from the archive's folder (default parameters)."""
    from sicube.pipeline.build import build

    path = tmp_path_factory.mktemp("cube") / "small.zarr"
    build(ARCHIVE_START, ARCHIVE_END, path, source=archive.root, chunks=SMALL_CUBE_CHUNKS,
          **SMALL_CUBE_FILL, mask_threshold=SMALL_CUBE_MASK_THRESHOLD, progress=False)
    return path


# --- mirror (sicube.archive.mirror) ---------------------------------------------------------------


@pytest.fixture
def mirror(archive):
    """A loopback mirror of `archive` on 127.0.0.1; set faults with `mirror.set_faults(plan)`."""
    from sicube.archive.mirror import Mirror

    with Mirror(archive.root) as running:
        yield running


# --- an S3-compatible object store (moto's standalone server) ----------------------------------


@dataclass(frozen=True)
class S3Server:
    """A running moto S3 server on 127.0.0.1: its endpoint, a bucket and working credentials."""

    endpoint: str
    bucket: str
    key: str
    secret: str

    @property
    def env(self) -> dict[str, str]:
        """The environment an s3fs user sets: credentials, region and endpoint."""
        return {"AWS_ACCESS_KEY_ID": self.key, "AWS_SECRET_ACCESS_KEY": self.secret,
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": self.endpoint}

    @property
    def storage_options(self) -> dict:
        """The same as fsspec storage options (no environment needed)."""
        return {"endpoint_url": self.endpoint, "key": self.key, "secret": self.secret}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    """moto's S3 server as a separate process (a real HTTP server, as s3fs's own tests run it)
    with authentication on: only the user it creates can read and write the bucket."""
    import boto3
    import moto.server  # noqa: F401 - declared test dependencies: missing is an error
    import s3fs  # noqa: F401

    port = _free_port()
    # The first three requests (creating the user, its policy and its key) are let through
    # without credentials; every later one must be signed by a known key.
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    log = (tmp_path_factory.mktemp("moto") / "server.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                "-p", str(port)], env=env, stdout=log, stderr=log)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        wait_for_port(port, process, what="moto server")
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                           aws_access_key_id="setup", aws_secret_access_key="setup")
        iam.create_user(UserName="sicube")
        iam.put_user_policy(UserName="sicube", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17",
             "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="sicube")["AccessKey"]
        server = S3Server(endpoint, "sicube-test", key["AccessKeyId"], key["SecretAccessKey"])
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                     aws_access_key_id=server.key, aws_secret_access_key=server.secret
                     ).create_bucket(Bucket=server.bucket)
        yield server
    finally:
        process.terminate()
        process.wait(10)
        log.close()


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> S3Server:
    """`s3_server` with its credentials, region and endpoint in this test's environment."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return s3_server


# --- a folder served over HTTP (a cube read as http://...) -------------------------------------


@pytest.fixture(scope="session")
def http_root() -> Iterator[tuple[Path, str]]:
    """(folder, its URL): a plain static HTTP server on 127.0.0.1 (aiohttp), as a web server
    serves a cube copied under its document root; listing is off, like most servers."""
    import asyncio

    from aiohttp import web

    folder = Path(tempfile.mkdtemp(prefix="sicube-http-"))
    app = web.Application()
    app.router.add_static("/", folder)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.run_until_complete(runner.cleanup())
        loop.close()
        shutil.rmtree(folder, ignore_errors=True)
