"""Versioned cubes: an icechunk repository as a store (snapshots, tags, one commit per run).

A store named ``icechunk://PATH`` (a local folder) or ``icechunk+s3://bucket/prefix`` (S3,
credentials and endpoint as for ``s3://``: `storage_options` or the AWS environment) is an
icechunk repository; ``?snapshot=ID_or_tag`` after it reads that version. Everything that
takes a store reaches it through `sicube.datacube.store.open_store`, which hands icechunk
stores to this module:

- readers get a read-only session of a snapshot: the tip of branch ``main`` unless told;
- `build`, `update` and `copy` write in a `run_session`: one writable session of ``main``
  that commits once, when the run succeeds, with a message naming the command, the days
  added and refilled and the sicube version. A run that fails or is killed commits nothing
  (the rerun starts over from ``main``), so readers of ``main`` only ever see finished runs.
  Two runs at once: the first to commit wins, the other stops with a one-line conflict.

icechunk is the ``sicube[icechunk]`` extra; it is imported only for these stores.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

from sicube._version import __version__
from sicube.errors import BadInput, require_extra

SCHEME, S3_SCHEME = "icechunk://", "icechunk+s3://"
MAIN = "main"
# The writable session of the run under way in this process, by repository (`run_session`).
_active: dict[str, object] = {}


def is_versioned(store) -> bool:
    """Whether `store` names an icechunk repository."""
    return isinstance(store, (str, os.PathLike)) and \
        os.fspath(store).startswith((SCHEME, S3_SCHEME))


def split(store) -> tuple[str, str | None]:
    """(the repository's URL, local paths absolute; the snapshot asked with ?snapshot=)."""
    text = os.fspath(store)
    text, _, query = text.partition("?")
    snapshot = parse_qs(query).get("snapshot", [None])[0] if query else None
    if text.startswith(SCHEME):
        text = SCHEME + str(Path(text.removeprefix(SCHEME)).absolute())
    return text, snapshot


def at_snapshot(store, snapshot: str | None):
    """`store` set to read `snapshot` (an id or a tag); `store` itself when None.
    BadInput for a store that is not an icechunk repository (it has no snapshots)."""
    if snapshot is None:
        return store
    if not is_versioned(store):
        raise BadInput(f"--snapshot {snapshot}: {store} is not an icechunk repository "
                       "(icechunk://PATH or icechunk+s3://bucket/prefix); it has no snapshots")
    return f"{split(store)[0]}?snapshot={snapshot}"


def underlying(store) -> str:
    """Where the repository's objects lie: a local folder, or an s3:// URL."""
    base = split(store)[0]
    if base.startswith(SCHEME):
        return base.removeprefix(SCHEME)
    return "s3://" + base.removeprefix(S3_SCHEME)


# The process that first used icechunk: its runtime's threads do not survive a fork, so a
# forked child (a DataLoader worker started by fork) that used it would hang forever.
_used_in: int | None = None


def _icechunk():
    global _used_in
    if _used_in is not None and _used_in != os.getpid():
        raise BadInput("icechunk:// stores cannot be read in a process forked after its parent "
                       "read one (it would hang): start DataLoader workers with "
                       "multiprocessing_context='spawn' (`SICDataset.loader` does)")
    require_extra("icechunk", "icechunk:// stores", "icechunk")
    import icechunk

    _used_in = os.getpid()

    # icechunk warns on every open of a local repository that the local file system does not
    # make concurrent commits safe: sicube's build lock keeps one writer per local repository.
    icechunk.set_logs_filter("error")
    return icechunk


def _storage(base: str, storage_options: dict | None):
    icechunk = _icechunk()
    if base.startswith(SCHEME):
        return icechunk.local_filesystem_storage(base.removeprefix(SCHEME))
    bucket, _, prefix = base.removeprefix(S3_SCHEME).partition("/")
    options = dict(storage_options or {})
    client = options.get("client_kwargs") or {}
    endpoint = (options.get("endpoint_url") or client.get("endpoint_url")
                or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))
    key = options.get("key")
    return icechunk.s3_storage(
        bucket=bucket, prefix=prefix.strip("/") or None, endpoint_url=endpoint,
        region=client.get("region_name") or os.environ.get("AWS_DEFAULT_REGION")
        or ("us-east-1" if endpoint else None),
        allow_http=bool(endpoint and endpoint.startswith("http://")),
        access_key_id=key, secret_access_key=options.get("secret"),
        session_token=options.get("token"), anonymous=options.get("anon") or None,
        from_env=None if key else True, force_path_style=bool(endpoint))


def repository(store, storage_options: dict | None = None, *, create: bool = False):
    """The icechunk repository of `store`; made when missing and `create`, else BadInput."""
    if not is_versioned(store):
        raise BadInput(f"store: {store}: not an icechunk repository (give icechunk://PATH or "
                       "icechunk+s3://bucket/prefix)")
    base = split(store)[0]
    icechunk = _icechunk()
    local = Path(base.removeprefix(SCHEME)) if base.startswith(SCHEME) else None
    try:
        storage = _storage(base, storage_options)
        # icechunk makes the folder it is asked about: a reader must not leave one behind
        if (local is None or local.is_dir()) and icechunk.Repository.exists(storage):
            return icechunk.Repository.open(storage)
        if not create:
            raise BadInput(f"store: {base}: does not exist (no icechunk repository there)")
        if local is not None and not local.parent.is_dir():
            raise BadInput(f"store: {base}: its folder {local.parent} does not exist")
        return icechunk.Repository.create(storage)
    except icechunk.IcechunkError as err:
        raise BadInput(f"store: {base}: cannot be read ({_reason(err)})") from None


def _reason(err: BaseException) -> str:
    """icechunk's message (a report over many lines) as its last, telling, line."""
    lines = [line.strip() for line in str(err).splitlines()]
    causes = [line.removeprefix("`->").strip() for line in lines if line.startswith("`->")]
    text = (causes or [line.removeprefix("x ") for line in lines if line] or
            [type(err).__name__])[-1]
    return text if len(text) <= 160 else text[:157] + "..."


def read_session(store, storage_options: dict | None = None, snapshot: str | None = None):
    """A read-only session of `snapshot` (a tag or a snapshot id; else the one in the URL,
    else the tip of ``main``). BadInput when the repository or the snapshot is missing."""
    base, asked = split(store)
    snapshot = snapshot or asked
    repo = repository(base, storage_options)
    if snapshot is None:
        return repo.readonly_session(branch=MAIN)
    icechunk = _icechunk()
    for how in ("tag", "snapshot_id"):
        with contextlib.suppress(icechunk.IcechunkError, ValueError):
            return repo.readonly_session(**{how: snapshot})
    raise BadInput(f"--snapshot {snapshot}: no snapshot or tag of that name in {base} "
                   f"(`sicube log {base}` lists them)")


def pin(store, snapshot: str | None = None, storage_options: dict | None = None
        ) -> tuple[object, str | None]:
    """(`store` set to one snapshot id, that id): `snapshot`, else the URL's, else the tip of
    ``main``, so that every process reading it reads the same version. Plain Zarr stores come
    back as they are, with None (BadInput when given a snapshot)."""
    if not is_versioned(store):
        return at_snapshot(store, snapshot), None
    read = read_session(store, storage_options, snapshot).snapshot_id
    return at_snapshot(store, read), read


def open_store(store, storage_options: dict | None = None, mode: str = "r"):
    """The zarr store of an icechunk repository (`sicube.datacube.store.open_store`): its
    snapshot (``?snapshot=``, else the tip of ``main``) read-only, or, to write, the session
    of this process's run (`run_session`)."""
    if mode == "r":
        return read_session(store, storage_options).store
    session = _active.get(split(store)[0])
    if session is None:
        raise BadInput(f"store: {store}: an icechunk store is written only by `sicube build`, "
                       "`update` and `copy` (one commit each)")
    return session.store


def snapshot_of(zstore) -> str | None:
    """The snapshot id a zarr store opened by `open_store` reads; None for plain Zarr."""
    session = getattr(zstore, "session", None)
    return getattr(session, "snapshot_id", None) if session is not None else None


def exists(store, storage_options: dict | None = None) -> bool:
    """Whether the repository's ``main`` holds a Zarr group (an empty repository does not)."""
    import zarr

    base = split(store)[0]
    try:
        zarr.open_group(read_session(base, storage_options).store, mode="r")
    except Exception:  # noqa: BLE001 - no repository, or no group at its root yet
        return False
    return True


def lock_path(store) -> Path | None:
    """The folder a local repository's build lock is named after; None on S3 (commits there
    are conditional writes: the second of two runs fails to commit)."""
    base = split(store)[0]
    return Path(base.removeprefix(SCHEME)) if base.startswith(SCHEME) else None


@contextlib.contextmanager
def run_session(store, command: str, summary=None, storage_options: dict | None = None,
                scheduler=None) -> Iterator[None]:
    """Run the body (a build, an update, a copy) in one writable session of ``main`` that it
    reaches through `open_store`, committed when the body returns, never when it raises: a
    failed or killed run leaves ``main`` as it was. Nothing for a plain Zarr store.

    `summary` (a BuildSummary) names the refilled days in the message. BadInput for a
    snapshot (read-only), for a process or cluster scheduler (their workers cannot write
    into this process's session), and when another run committed to ``main`` first.
    """
    if not is_versioned(store):
        yield
        return
    base, snapshot = split(store)
    if snapshot is not None:
        raise BadInput(f"store: {store}: a snapshot is read-only; {command} writes to {base}")
    if scheduler not in (None, "threads"):
        raise BadInput(f"--scheduler {scheduler}: an icechunk store is written on this "
                       "process's threads (the default scheduler)")
    if base in _active:
        raise BadInput(f"store: {base}: a run on it is already under way in this process")
    icechunk = _icechunk()
    session = repository(base, storage_options, create=True).writable_session(MAIN)
    before = _days(session.store)
    _active[base] = session
    try:
        yield
    finally:
        del _active[base]
    if not session.has_uncommitted_changes:
        return
    message, metadata = _message(command, before, _days(session.store), summary)
    try:
        session.commit(message, metadata=metadata)
    except icechunk.ConflictError:
        raise BadInput(f"store: {base}: conflict: another run committed to main while this "
                       f"{command} ran; main keeps that run, this one was not committed: run "
                       "it again") from None


def _days(zstore) -> list[dt.date]:
    """The cube's days in a store (none when it holds no cube yet)."""
    import zarr

    try:
        times = zarr.open_group(zstore, mode="r")["time"][:]
    except Exception:  # noqa: BLE001 - no cube (a new repository)
        return []
    return [dt.date(1970, 1, 1) + dt.timedelta(days=int(t)) for t in times]


def _span(days) -> str:
    return f"{days[0]}..{days[-1]}" if days else ""


def _message(command: str, before: list[dt.date], after: list[dt.date], summary
             ) -> tuple[str, dict]:
    """The commit's message and metadata: the command, the days added and refilled."""
    added = sorted(set(after) - set(before))
    refilled = sorted(getattr(summary, "recovered", None) or [])
    parts = [f"sicube {command}"]
    parts.append(f"added {len(added)} days {_span(added)}" if added else "no day added")
    if refilled:
        parts.append(f"refilled {len(refilled)} late days {', '.join(map(str, refilled[:5]))}"
                     + (" ..." if len(refilled) > 5 else ""))
    parts.append(f"sicube {__version__}")
    metadata = {"command": command, "days": _span(after), "added": _span(added),
                "refilled": [str(d) for d in refilled], "sicube_version": __version__}
    return "; ".join(parts), metadata


@dataclass(frozen=True)
class Snapshot:
    """One snapshot of a repository's ``main``, newest first in `log`."""

    id: str
    time: dt.datetime
    message: str
    days: str  # the cube's span then, "first..last" ("" before the first build)

    def line(self) -> str:
        return (f"{self.id}  {self.time:%Y-%m-%d %H:%M:%S}  {self.days or '-':22}  "
                f"{self.message}")


def log(store, storage_options: dict | None = None) -> list[Snapshot]:
    """The snapshots of ``main``, newest first (`sicube log`)."""
    repo = repository(store, storage_options)
    return [Snapshot(info.id, info.written_at, info.message,
                     str((info.metadata or {}).get("days", "")))
            for info in repo.ancestry(branch=MAIN)]


def tag(store, name: str, snapshot: str | None = None,
        storage_options: dict | None = None) -> str:
    """Name a snapshot (the tip of ``main`` unless given) `name`; returns its id."""
    icechunk = _icechunk()
    base, asked = split(store)
    snapshot = snapshot or asked
    repo = repository(base, storage_options)
    target = read_session(base, storage_options, snapshot).snapshot_id if snapshot \
        else repo.lookup_branch(MAIN)
    try:
        repo.create_tag(name, target)
    except icechunk.IcechunkError as err:
        raise BadInput(f"tag {name}: cannot be made in {base} ({_reason(err)})") from None
    return target


def copy(source, target, storage_options: dict | None = None) -> str:
    """Copy the cube at `source` into the new store `target` (plain Zarr and icechunk either
    way), every document and chunk as it is; returns a one-line summary."""
    from zarr.core.sync import sync

    from sicube.datacube import store as stores
    from sicube.datacube.cube import open_group

    src = open_group(source, storage_options=storage_options).store
    if is_versioned(target):
        if exists(target, storage_options):
            raise BadInput(f"store: {split(target)[0]}: already holds a cube; copy into a new "
                           "store")
        with run_session(target, f"copy from {source}", storage_options=storage_options):
            count = sync(_copy_keys(src, open_store(target, storage_options, "w-"), True))
        return f"copied {count} objects from {source} into {target} (one commit on main)"
    local = stores.local_path(target)
    if local is not None:
        if local.exists():
            raise BadInput(f"store: {target}: exists; copy into a new store")
        with stores.atomic_folder(local) as tmp:
            from zarr.storage import LocalStore

            count = sync(_copy_keys(src, LocalStore(tmp), False))
            _consolidate(LocalStore(tmp))
    else:
        if stores.filesystem(target, storage_options)[0].exists(
                stores.filesystem(target, storage_options)[1]):
            raise BadInput(f"store: {target}: exists; copy into a new store")
        dst = stores.open_store(target, storage_options=storage_options, mode="w-")
        count = sync(_copy_keys(src, dst, False))
        _consolidate(dst)
    return f"copied {count} objects from {source} into {target}"


def _consolidate(zstore) -> None:
    """Consolidated metadata for a plain store (what lets it open over HTTP)."""
    import zarr

    from sicube.datacube.store import consolidated_quietly

    with consolidated_quietly():
        zarr.consolidate_metadata(zstore)


async def _copy_keys(src, dst, drop_consolidated: bool, at_once: int = 32) -> int:
    """Copy every key of `src` into `dst`, `at_once` at a time; the root document without
    its consolidated copy of the metadata when `drop_consolidated` (icechunk has none)."""
    import asyncio

    from zarr.core.buffer import default_buffer_prototype

    prototype = default_buffer_prototype()
    gate = asyncio.Semaphore(at_once)

    async def one(key: str) -> None:
        async with gate:
            value = await src.get(key, prototype)
            if drop_consolidated and key == "zarr.json":
                doc = json.loads(value.to_bytes())
                doc.pop("consolidated_metadata", None)
                value = prototype.buffer.from_bytes(json.dumps(doc).encode())
            await dst.set(key, value)

    keys = [key async for key in src.list()]
    # The metadata documents first, parents before children: icechunk takes a chunk only
    # into an array it knows.
    documents = sorted((k for k in keys if k.rsplit("/", 1)[-1] in ("zarr.json", ".zattrs",
                                                                     ".zgroup", ".zarray")),
                       key=lambda k: k.count("/"))
    for key in documents:
        await one(key)
    await asyncio.gather(*(one(key) for key in keys if key not in set(documents)))
    return len(keys)
