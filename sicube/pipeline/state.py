"""The build's state in an open cube: read it from the cube's record, save it, say a failure.

The state (`sicube.pipeline.plan.BuildState`: what is done, what is left) lives in the root
group's attributes as a `sicube.datacube.record.CubeRecord`, the day lists under their own
names so that `info` and other readers see them without knowing the builder. The builder
saves it after every finished step, so a killed run rerun redoes only unfinished work.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sicube.archive import products
from sicube.archive.sources import GridCoords
from sicube.datacube import cube
from sicube.datacube import store as store_location
from sicube.datacube.record import CubeRecord, check_format
from sicube.errors import BadInput
from sicube.pipeline.plan import BuildState


def read_state(group) -> BuildState:
    """The build's state from the cube's record, for a run that writes to it: a cube of a
    newer format, or one from before the day lists, is refused."""
    check_format(group.attrs, group.store, writing=True)
    record = CubeRecord.from_attrs(group.attrs)
    if "args" not in (record.build or {}) or not record.has_day_lists:
        raise BadInput(f"{group.store}: a cube from an older sicube (no day lists); "
                       "rebuild it into a new store")
    data = {**record.build, "observed": record.source_files or {},
            "missing": list(record.missing_days), "failed": record.failed_days or {},
            "suspicious": record.suspicious_days or {}}
    return BuildState.from_data(data)


def state_attrs(state: BuildState) -> dict:
    """The state as group attributes: the day lists under their own names (so that `info`
    and other readers see them without knowing the builder's record), in this release's
    form (`cube.FORMAT_VERSION`): an update of a cube from an earlier release rewrites its
    record so. Each record is encoded once, here (not the whole state first and decoded
    again: at a decade's 1.7 MB of day records that doubled the cost of every save)."""
    data = state.to_data()
    return CubeRecord(
        format=cube.FORMAT_VERSION, source_files=data.pop("observed"),
        missing_days=tuple(data.pop("missing")), failed_days=data.pop("failed"),
        suspicious_days=data.pop("suspicious"), build=data).to_attrs()


def save(group, state: BuildState) -> None:
    """Record the state, and republish the consolidated metadata (writing the group's
    attributes drops it; readers over HTTP cannot open a cube without it)."""
    group.update_attributes(state_attrs(state))  # one write (attrs.update: one per key)
    store_location.consolidate(group.store)


@contextlib.contextmanager
def failure_recorded(store: str, storage_options: dict | None = None) -> Iterator[None]:
    """On an error or Ctrl-C inside a run, say so in the cube (it stays resumable)."""
    try:
        yield
    except BaseException as err:
        with contextlib.suppress(Exception):
            group = store_location.open_group_for_writing(store,
                                                          storage_options=storage_options)
            reason = "interrupted" if isinstance(err, KeyboardInterrupt) else \
                f"{type(err).__name__}: {err}".splitlines()[0][:300]
            if str(group.attrs.get(cube.STATUS, "")).startswith(cube.UPDATING):
                # The cube stays readable through the day it was complete through.
                group.attrs[cube.LAST_ERROR] = reason
            else:
                cube.set_status(group, f"{cube.FAILED}: {reason}")
        raise


def cube_grid(group) -> GridCoords:
    """The cube's grid (its x and y)."""
    return GridCoords(group["x"][:], group["y"][:])


def cube_crs(group) -> products.GridCRS:
    """The cube's CRS, as its grid mapping declares it (taken from the first file)."""
    return products.GridCRS.from_attrs(group[cube.GRID_MAPPING].attrs)
