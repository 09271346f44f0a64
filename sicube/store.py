"""Where a cube lives: one opener for every store location (path or URL) and its errors.

`open_store` is what every command and API that takes a store calls (through
`sicube.cube.open_group` for readers). It accepts a local path, ``file://``, ``http(s)://``,
``s3://``, ``memory://`` and any other fsspec URL with `storage_options`, and turns every way
a store can fail to open (missing, not Zarr, unreachable server, no permission, a URL scheme
whose package is not installed) into one line (`BadInput`), the same for every location.

Credentials and endpoints come from `storage_options` or, as every fsspec user expects, from
the environment: s3fs (through botocore) reads AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_SESSION_TOKEN, AWS_PROFILE, AWS_DEFAULT_REGION and AWS_ENDPOINT_URL (or
AWS_ENDPOINT_URL_S3); fsspec itself applies FSSPEC_S3_ENDPOINT_URL-style variables
(``FSSPEC_<PROTOCOL>_<OPTION>``) to every file system it makes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from sicube.errors import BadInput

if TYPE_CHECKING:
    from zarr.abc.store import Store

# Documents whose presence makes a location a Zarr group (v3, and v2 for older stores).
_ZARR_DOCS = ("zarr.json", ".zgroup")
# The pip extra that brings a URL scheme's file system (the rest come with fsspec/aiohttp).
_EXTRAS = {"s3": "s3", "s3a": "s3"}
# URL schemes whose first path component is a bucket that must exist before writing.
_BUCKETED = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"}
READ_MODES = ("r", "r+")


class NotZarr(BadInput):
    """The location exists but holds no Zarr group (a plain folder, a file, other objects)."""


WRITE_MODES = ("w", "w-", "a")


def location(store: str | os.PathLike) -> str:
    """The store as one string: an absolute local path (``file://`` URLs included), or the URL."""
    text = os.fspath(store)
    if text.startswith("file://"):
        return str(Path(text.removeprefix("file://")).absolute())
    if "://" in text:
        return text
    return str(Path(text).absolute())


def local_path(store: str | os.PathLike) -> Path | None:
    """The store's local folder, or None for a remote one."""
    text = location(store)
    return None if "://" in text else Path(text)


def parse_storage_options(text: str | None) -> dict | None:
    """``--storage-options`` JSON as a dict (None when not given); BadInput when not an object."""
    if text is None or not text.strip():
        return None
    try:
        options = json.loads(text)
    except json.JSONDecodeError as err:
        raise BadInput(f"--storage-options: not JSON ({err.msg} at character {err.pos})"
                       ) from None
    if not isinstance(options, dict):
        raise BadInput("--storage-options: give a JSON object, e.g. "
                       '\'{"endpoint_url": "http://127.0.0.1:9000", "anon": false}\'')
    return options


def filesystem(store: str | os.PathLike, storage_options: dict | None = None):
    """(fsspec file system, path inside it) of a store; BadInput for an unusable URL scheme."""
    import fsspec

    text = location(store)
    protocol = text.split("://", 1)[0] if "://" in text else "file"
    try:
        return fsspec.core.url_to_fs(text, **(storage_options or {}))
    except ImportError:
        extra = _EXTRAS.get(protocol)
        hint = f": pip install 'sicube[{extra}]'" if extra else ""
        raise BadInput(f"store: {store}: {protocol}:// needs a package that is not "
                       f"installed{hint}") from None
    except (ValueError, TypeError) as err:  # unknown protocol, an option the fs does not take
        raise BadInput(f"store: {store}: cannot open this kind of URL ({_reason(err)})") from None


def open_store(store: str | os.PathLike, *, storage_options: dict | None = None,
               mode: str = "r") -> Store:
    """The Zarr store at `store` (path or fsspec URL), checked, for zarr and xarray to open.

    Parameters
    ----------
    store : a local path, ``file://``, ``http(s)://``, ``s3://``, ``memory://`` or any fsspec
        URL.
    storage_options : options of the URL's file system (``endpoint_url``, ``key``,
        ``secret``, ``anon``, ...); credentials may also come from the environment.
    mode : "r" (read-only) or "r+" an existing Zarr store; "w", "w-" or "a" a location to
        write (it need not exist yet, but its folder or bucket must).

    Raises BadInput (one line) when the store is missing, is not a Zarr store, its server
    cannot be reached, or permission is refused.
    """
    from zarr.storage import FsspecStore, LocalStore

    if mode not in READ_MODES + WRITE_MODES:
        raise ValueError(f"mode {mode!r}: choose from {READ_MODES + WRITE_MODES}")
    local = local_path(store)
    if local is not None:
        _check_local(store, local, mode)
        return LocalStore(local, read_only=mode == "r")
    fs, path = filesystem(store, storage_options)
    try:
        if mode in READ_MODES:
            _check_zarr(store, fs, path)
        else:
            _check_parent(store, fs, path)
    except BadInput:
        raise
    except Exception as err:  # noqa: BLE001 - every file system raises its own types
        raise failure(store, err) from None
    # zarr wants the asynchronous twin of the file system just checked (fsspec caches both)
    return FsspecStore.from_url(location(store), storage_options=storage_options,
                                read_only=mode == "r")


def failure(store: str | os.PathLike, err: BaseException) -> BadInput:
    """One line saying why `store` could not be used, from a file system's exception."""
    status = getattr(err, "status", None)
    if isinstance(err, PermissionError) or status in (401, 403):
        return BadInput(f"store: {store}: permission denied ({_reason(err)}); check the "
                        "credentials (storage options or AWS_ACCESS_KEY_ID/"
                        "AWS_SECRET_ACCESS_KEY)")
    if isinstance(err, FileNotFoundError) or status == 404:
        return BadInput(f"store: {store}: does not exist ({_reason(err)})")
    names = " ".join(cls.__name__ for cls in type(err).__mro__)
    if isinstance(err, (ConnectionError, TimeoutError)) or "Connect" in names \
            or "Timeout" in names:
        return BadInput(f"store: {store}: cannot reach the server ({_reason(err)})")
    return BadInput(f"store: {store}: cannot be read ({_reason(err)})")


def _check_local(store, local: Path, mode: str) -> None:
    try:
        if mode in READ_MODES:
            if not local.exists():
                raise BadInput(f"store: {store}: does not exist")
            if not any((local / doc).is_file() for doc in _ZARR_DOCS):
                raise NotZarr(f"store: {store}: not a readable Zarr store (no zarr.json)")
        elif not local.parent.is_dir():
            raise BadInput(f"store: {store}: its folder {local.parent} does not exist")
        elif not os.access(local.parent, os.W_OK):
            raise BadInput(f"store: {store}: permission denied (cannot write in {local.parent})")
    except PermissionError as err:
        raise failure(store, err) from None


def _check_zarr(store, fs, path: str) -> None:
    """BadInput unless a Zarr group document is at `path`."""
    for doc in _ZARR_DOCS:
        try:
            fs.cat_file(f"{path.rstrip('/')}/{doc}")
            return
        except FileNotFoundError as err:
            missing = err
    try:
        there = fs.exists(path) or bool(fs.ls(path, detail=False))
    except Exception:  # noqa: BLE001 - an HTTP folder cannot be listed: say "missing"
        there = False
    if there:
        raise NotZarr(f"store: {store}: not a readable Zarr store (no zarr.json)")
    raise failure(store, missing)


def _check_parent(store, fs, path: str) -> None:
    """BadInput when the bucket that would hold `path` does not exist (object stores only:
    their "folders" below the bucket need not exist, nor do a memory file system's)."""
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    if not protocols & _BUCKETED:
        return
    bucket = path.strip("/").split("/", 1)[0]
    if bucket and not fs.exists(bucket):
        raise BadInput(f"store: {store}: bucket {bucket} does not exist (or is not yours)")


def _reason(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 160 else text[:157] + "..."
