"""Where a cube lives: one opener for every store location (path or URL) and its errors.

`open_store` is what every command and API that takes a store calls (through
`sicube.datacube.cube.open_group` for readers). It accepts a local path, ``file://``, ``http(s)://``,
``s3://``, ``memory://`` and any other fsspec URL with `storage_options`, and turns every way
a store can fail to open (missing, not Zarr, unreachable server, no permission, a URL scheme
whose package is not installed) into one line (`BadInput`), the same for every location.

Credentials and endpoints come from `storage_options` or, as every fsspec user expects, from
the environment: s3fs (through botocore) reads AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_SESSION_TOKEN, AWS_PROFILE, AWS_DEFAULT_REGION and AWS_ENDPOINT_URL (or
AWS_ENDPOINT_URL_S3); fsspec itself applies FSSPEC_S3_ENDPOINT_URL-style variables
(``FSSPEC_<PROTOCOL>_<OPTION>``) to every file system it makes.

Remote file systems and forked processes: an HTTP or S3 file system holds an aiohttp
session whose pooled connections are registered with its event loop's epoll, and a forked
child (a DataLoader worker) shares that epoll with its parent. fsspec drops its cache of
file systems in the child; if the child then frees its copy of the parent's file system,
aiohttp closes the copied connections, which unregisters the parent's sockets from the
shared epoll, and the parent's next request on one of them waits until it times out (about
5 minutes). So this module keeps every remote file system it opens referenced for the life
of the process (`_opened`): a child never frees what it inherited, and each process closes
only the sessions it opened itself, at exit.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import shutil
import socket
import uuid
import warnings
from collections.abc import Iterator
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
# What zarr warns each time consolidated metadata is read or written in a v3 store (it is
# not part of the v3 spec); sicube relies on it, so the warning is no news to its users.
CONSOLIDATED_WARNING = ".*[Cc]onsolidated metadata.*"
log = logging.getLogger(__name__)
# Every file system `filesystem` and `open_store` handed out in this process or inherited
# from its parent (see the module docstring), with the id of the process that opened it.
_opened: list[tuple[int, object]] = []


class NotZarr(BadInput):
    """The location exists but holds no Zarr group (a plain folder, a file, other objects)."""


WRITE_MODES = ("w", "w-", "a")


def location(store: str | os.PathLike) -> str:
    """The store as one string: an absolute local path (``file://`` URLs included), or the URL."""
    text = os.fspath(store)
    if text.startswith(("icechunk://", "icechunk+s3://")):
        from sicube.datacube.versions import split

        base, snapshot = split(text)
        return base if snapshot is None else f"{base}?snapshot={snapshot}"
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

    from sicube.datacube import versions

    text = versions.underlying(store) if versions.is_versioned(store) else location(store)
    protocol = text.split("://", 1)[0] if "://" in text else "file"
    try:
        fs, path = fsspec.core.url_to_fs(text, **(storage_options or {}))
    except ImportError:
        extra = _EXTRAS.get(protocol)
        hint = f": pip install 'sicube[{extra}]'" if extra else ""
        raise BadInput(f"store: {store}: {protocol}:// needs a package that is not "
                       f"installed{hint}") from None
    except (ValueError, TypeError) as err:  # unknown protocol, an option the fs does not take
        raise BadInput(f"store: {store}: cannot open this kind of URL ({_reason(err)})") from None
    _keep(fs)
    return fs, path


def open_store(store: str | os.PathLike, *, storage_options: dict | None = None,
               mode: str = "r", snapshot: str | None = None) -> Store:
    """The Zarr store at `store` (path or fsspec URL), checked, for zarr and xarray to open.

    Parameters
    ----------
    store : a local path, ``file://``, ``http(s)://``, ``s3://``, ``memory://`` or any fsspec
        URL.
    storage_options : options of the URL's file system (``endpoint_url``, ``key``,
        ``secret``, ``anon``, ...); credentials may also come from the environment.
    mode : "r" (read-only) or "r+" an existing Zarr store; "w", "w-" or "a" a location to
        write (it need not exist yet, but its folder or bucket must).
    snapshot : an icechunk repository's (``icechunk://PATH``, ``icechunk+s3://bucket/prefix``)
        snapshot id or tag to read (default: the tip of ``main``); writing happens only inside
        `sicube.datacube.versions.run_session` (a build, update or copy: one commit).

    Raises BadInput (one line) when the store is missing, is not a Zarr store, its server
    cannot be reached, or permission is refused.
    """
    from zarr.storage import FsspecStore, LocalStore

    if mode not in READ_MODES + WRITE_MODES:
        raise ValueError(f"mode {mode!r}: choose from {READ_MODES + WRITE_MODES}")
    from sicube.datacube import versions

    if versions.is_versioned(store) or snapshot is not None:
        return versions.open_store(versions.at_snapshot(store, snapshot), storage_options,
                                   mode)
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
    zstore = FsspecStore.from_url(location(store), storage_options=storage_options,
                                  read_only=mode == "r")
    _keep(zstore.fs)
    return zstore


@contextlib.contextmanager
def consolidated_quietly() -> Iterator[None]:
    """Read or write consolidated metadata without zarr's warning that it is not in the v3
    spec: it is what lets a cube open over HTTP, which cannot list a folder."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=CONSOLIDATED_WARNING)
        yield


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike) -> Iterator[Path]:
    """A temp path beside local file `target` to write; renamed onto `target` on success.

    The body writes the temp path (bytes, text, or a library's ``save(path)``); when it
    returns, the temp replaces `target` at once (`os.replace`), so `target` is either the
    old file or the whole new one, never a part. On any error, Ctrl-C included, the temp is
    removed and `target` is left as it was.
    """
    target = Path(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.part")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike, *, replace: bool = False) -> Iterator[Path]:
    """A temp folder path beside local folder `target` to write; renamed to `target` on
    success (all or nothing), the old `target` removed first when `replace`. On any error,
    Ctrl-C included, the temp folder is removed and `target` is left as it was."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.part")
    try:
        yield tmp
        if replace and target.exists():
            shutil.rmtree(target)
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def build_lock(store: str | os.PathLike) -> Iterator[None]:
    """Refuse a second build on the same store while one runs (a lock file beside the store).

    The lock file, ``<store>.lock``, holds "host pid" of its builder; one left by a killed
    build is taken over. It is named after the store's real path, so two spellings of one
    store (a symlink, a relative path) share it. A remote store has no lock (a warning says
    so), but an icechunk repository on S3 needs none (of two runs, the second to commit
    fails). BadInput when another build holds the lock or the lock cannot be written.
    """
    from sicube.datacube import versions

    local = versions.lock_path(store) if versions.is_versioned(store) else local_path(store)
    if local is None and versions.is_versioned(store):
        yield
        return
    if local is None:
        log.warning("%s: remote store, no build lock; do not run two builds on it at once", store)
        yield
        return
    real = Path(os.path.realpath(local))
    lock = real.with_name(real.name + ".lock")
    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if _lock_is_live(lock):
                raise BadInput(f"{store}: another sicube build is running on it "
                               f"({lock.read_text().strip()}); wait for it or stop it") from None
            lock.unlink(missing_ok=True)  # left by a killed build
            continue
        except OSError as err:
            raise BadInput(f"{store}: cannot write beside the store ({err.strerror})") from err
        with os.fdopen(fd, "w") as fh:
            fh.write(me)
        break
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def open_group_for_writing(store: str, mode: str = "r+", storage_options: dict | None = None):
    """The store's root group for the builder: fresh metadata, never the consolidated copy
    (which a run's own writes make stale)."""
    import zarr

    zstore = open_store(store, storage_options=storage_options, mode=mode)
    return zarr.open_group(zstore, mode=mode, use_consolidated=False)


def exists(store: str, storage_options: dict | None = None) -> bool:
    """True when something is at the store's location; BadInput when it cannot be asked."""
    from sicube.datacube import versions

    if versions.is_versioned(store):
        return versions.exists(store, storage_options)
    local = local_path(store)
    if local is not None:
        return local.exists()
    fs, path = filesystem(store, storage_options)
    try:
        return fs.exists(path)
    except Exception as err:  # noqa: BLE001 - unreachable server, no permission
        raise failure(store, err) from None


def consolidate(store) -> None:
    """Republish the consolidated metadata, which readers over HTTP cannot open a cube
    without (writing a group's attributes drops it)."""
    import zarr

    if not getattr(store, "supports_consolidated_metadata", True):
        return  # icechunk: lists fast, keeps none
    with consolidated_quietly():
        zarr.consolidate_metadata(store)


def _lock_is_live(lock: Path) -> bool:
    """Whether the builder named in `lock` still runs (one on another host: assume so)."""
    try:
        host, pid = lock.read_text().split()
        if host != socket.gethostname():
            return True  # cannot tell; play safe
        os.kill(int(pid), 0)
    except (OSError, ValueError):
        return False
    return True


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


def _keep(fs) -> None:
    """Hold `fs` for the life of the process, and close its session at exit (see the module
    docstring); fsspec hands out one cached instance per options, so this list stays short."""
    if any(kept is fs for _, kept in _opened):
        return
    if not any(pid == os.getpid() for pid, _ in _opened):
        atexit.register(_close_sessions)  # the first in this process: after zarr's import,
        # so it runs before zarr stops its event loop (atexit runs the last registered first)
    _opened.append((os.getpid(), fs))


def _close_sessions() -> None:
    """Close the HTTP sessions of the file systems this process opened (not inherited ones):
    aiohttp otherwise prints "Unclosed client session" when they are collected."""
    for pid, fs in _opened:
        if pid != os.getpid() or not getattr(fs, "async_impl", False):
            continue
        with contextlib.suppress(Exception):  # a server gone, a loop already stopped
            if fs.asynchronous:  # zarr's twin: its session lives on zarr's event loop
                from zarr.core.sync import sync

                sync(_close_session(fs), timeout=5)
            else:  # fsspec's own event loop thread
                from fsspec.asyn import sync

                sync(fs.loop, _close_session, fs, timeout=5)


async def _close_session(fs) -> None:
    session = getattr(fs, "_session", None)  # HTTPFileSystem: an aiohttp ClientSession
    if session is not None and not session.closed:
        await session.close()
    client = getattr(fs, "_s3creator", None)  # S3FileSystem: aiobotocore's client
    if client is not None:
        await client.__aexit__(None, None, None)


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
