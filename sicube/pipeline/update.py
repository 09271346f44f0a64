"""What `sicube.update` decides before it runs the stages: the update's source (the cube's
own unless given), its last day (as given, or the newest the source has), the gap guard,
a server's new days fetched before the time axis grows, and the grown time axis."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from sicube.archive import products
from sicube.archive.sources import GridCoords, find_day_files
from sicube.datacube import cube
from sicube.datacube.record import CubeRecord
from sicube.dates import DateLike, day_range, parse_date
from sicube.errors import BadInput
from sicube.params import OK
from sicube.pipeline.arguments import Source, make_source
from sicube.pipeline.ingest import Arrival

# `update` refuses to append more consecutive days without any file than this, unless told
# (`allow_gap`): a cron job against a dead source must not grow the cube by empty days.
MAX_EMPTY_DAYS = 30


def update_source(group, base_url, source, raw_dir, sensor: str | None = None) -> Source:
    """The update's source: as given, else where the cube came from (folder or hosts); the
    grid is the cube's, the sensor choice the build's unless given."""
    record = CubeRecord.from_attrs(group.attrs)
    grid = record.grid
    if grid is None:
        found = products.grid_of_coords(group["x"][:], group["y"][:])
        grid = found.name if found else None
    sensor = sensor or record.source_sensor or products.AUTO
    if source is not None or base_url is not None:
        return make_source(base_url, source, raw_dir, grid, sensor)
    folder = record.source_directory or None
    if folder is not None:
        if not Path(folder).is_dir():
            raise BadInput(f"the cube's source folder {folder} is gone; give --source or "
                           "--base-url")
        return make_source(None, folder, raw_dir, grid, sensor)
    hosts = list(record.source_base_urls or ()) or record.source_base_url or None
    return make_source(hosts, None, raw_dir, grid, sensor)


def update_end(end: DateLike | None, last: dt.date, src: Source, allow_gap: bool) -> dt.date:
    """The update's last day: as given, or the newest the source has; gaps refused."""
    today = dt.datetime.now(dt.timezone.utc).date()
    wanted = parse_date(end, "end") if end is not None else None
    if wanted is not None and wanted > today:
        raise BadInput(f"--end {wanted}: in the future (today is {today} UTC)")
    if wanted is not None and wanted <= last:
        return last
    before = wanted or today - dt.timedelta(days=1)
    newest = newest_day(src, before, last)
    if wanted is None:
        if newest is None and src.base_urls and (before - last).days > MAX_EMPTY_DAYS:
            raise BadInput(f"{src.where}: no file in the {MAX_EMPTY_DAYS} days up to {before}; "
                           "give --end (and --allow-gap) to append empty days anyway")
        return newest or last
    check_gap(wanted, newest or last, allow_gap)
    return wanted


def check_gap(wanted: dt.date, newest: dt.date, allow_gap: bool) -> None:
    """BadInput when appending up to `wanted` adds more than `MAX_EMPTY_DAYS` days without a
    file after `newest`, unless `allow_gap`."""
    gap = (wanted - newest).days
    if gap > MAX_EMPTY_DAYS and not allow_gap:
        raise BadInput(f"--end {wanted}: the source has no file after {newest}, so "
                       f"{gap} empty days would be appended; give an earlier --end, or "
                       "--allow-gap to append them")


def fetch_new_days(src: Source, last: dt.date, wanted: dt.date, to_newest: bool,
                   allow_gap: bool, grid: GridCoords, progress: bool,
                   executor) -> tuple[dt.date, list[Arrival]]:
    """Download a server's new days (last, wanted] before the time axis grows: (the update's
    last day, their arrivals up to it).

    The server's newest day is probed with HEAD requests, which an HTML error page or a
    broken file pass; only days whose download validated count: `to_newest` (no --end) ends
    the update at the newest of them, else the gap guard counts from it. On a cluster a
    worker downloads them (`executor`; the ingest tasks again: a few days).
    """
    days = list(day_range(last + dt.timedelta(days=1), wanted))
    looked, _ = executor.look(executor.arrivals(src, days, progress, grid))
    newest = max((a.day for a in looked if a.status == OK), default=last)
    if to_newest:
        wanted = newest
    check_gap(wanted, newest, allow_gap)
    return wanted, [a for a in looked if a.day <= wanted]


def newest_day(src: Source, before: dt.date, after: dt.date) -> dt.date | None:
    """The newest day in (after, before] the source has a file for; None when there is none
    (a server is probed backwards from `before`, at most `MAX_EMPTY_DAYS` days)."""
    if src.directory is not None:
        found = [d for d in find_day_files(src.directory, src.grid) if after < d <= before]
        return max(found, default=None)
    from sicube.archive.download import latest_available

    limit = min(MAX_EMPTY_DAYS, (before - after).days)
    if limit <= 0:
        return None
    return latest_available(src.base_urls, before=before, limit=limit, grid=src.grid,
                            sensor=src.sensor)


def extend_time(group, days: list[dt.date]) -> None:
    """Grow the time axis to `days` (new cells empty until ingested and filled)."""
    from sicube.dates import to_datetime64

    n = len(days)
    for name in (*cube.CUBE_VARS, cube.OBSERVED, cube.SENSOR, *cube.DAY_VARS, cube.EXTENT,
                 cube.AREA):
        if name not in group:
            continue  # `sensor`, day statistics, extent and area on a cube from before them
        array = group[name]
        array.resize((n, *array.shape[1:]))
    time_array = group["time"]
    time_array.resize((n,))
    epoch = np.datetime64("1970-01-01", "D")
    time_array[:] = (to_datetime64(days).astype("datetime64[D]") - epoch).astype(np.int32)
