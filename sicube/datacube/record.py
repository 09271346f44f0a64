"""The cube's record: every root attribute sicube writes, decoded and encoded in one place.

The keys are defined in `sicube.datacube.cube`; `CubeRecord` is the only code that knows the forms
they took over the releases, so the builder, `info`, the report, the plots, the mask export,
the readers and `sicube.testing` ask it rather than the attributes:

- format 1 (sicube 0.1): records (day lists, source files, fill and quality parameters,
  hosts) stored as JSON values; some cubes of it lack the state, the day lists, the
  provenance. Missing days may be ints (YYYYMMDD) or strings.
- format 2: every record a JSON string (netCDF-legal attributes), day keys as strings.

A cube of a format newer than `cube.FORMAT_VERSION` is refused by writers and read with a
warning (`check_format`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sicube.archive import products
from sicube.datacube import cube
from sicube.errors import BadInput

# Record field -> root attribute key (every key sicube writes, besides CF's own).
KEYS = {
    "format": cube.MARKER,
    "sicube_version": cube.VERSION,
    "status": cube.STATUS,
    "finish_command": cube.FINISH,
    "last_error": cube.LAST_ERROR,
    "build": cube.BUILD_STATE,
    "source_files": cube.SOURCE_FILES,
    "missing_days": cube.MISSING_DAYS,
    "failed_days": cube.FAILED_DAYS,
    "suspicious_days": cube.SUSPICIOUS_DAYS,
    "source_directory": cube.SOURCE_DIRECTORY,
    "source_base_url": cube.SOURCE_URL,
    "source_base_urls": cube.SOURCE_URLS,
    "source_grid": cube.SOURCE_GRID,
    "source_sensor": cube.SOURCE_SENSOR,
    "fill_parameters": cube.FILL_PARAMETERS,
    "mask_threshold": cube.MASK_THRESHOLD_ATTR,
    "mask_source": cube.MASK_SOURCE,
    "mask_span": cube.MASK_SPAN,
    "suspicious_policy": cube.SUSPICIOUS_POLICY,
    "quality_rules": cube.QUALITY_RULES,
    "build_time": cube.BUILD_TIME,
    "history": cube.HISTORY,
}
_FIELDS = {key: name for name, key in KEYS.items()}


class NewerCubeWarning(UserWarning):
    """The cube was written by a newer sicube (a cube format this code does not know)."""


def decoded(value: Any) -> Any:
    """A record attribute as its value: JSON strings (format 2) decoded, JSON values
    (format 1) copied (the builder's state changes what it reads; the group's attributes
    must not change with it); None for an absent or empty one."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return json.loads(value) if isinstance(value, str) else copy.deepcopy(value)


def _day_key(day: Any) -> str:
    """A day key as the builder writes it, YYYYMMDD (format 1 cubes may hold ints)."""
    return str(day).replace("-", "")


def _day_map(value: Any) -> dict[str, Any] | None:
    """{YYYYMMDD: value} of a record keyed by day."""
    found = decoded(value)
    return None if found is None else {_day_key(k): v for k, v in dict(found).items()}


def _day_reasons(value: Any) -> dict[str, str] | None:
    """{YYYYMMDD: reason} of a record of failed or suspicious days."""
    found = _day_map(value)
    return None if found is None else {key: str(reason) for key, reason in found.items()}


def _days(value: Any) -> tuple[str, ...] | None:
    found = decoded(value)
    return None if found is None else tuple(_day_key(day) for day in found)


def _texts(value: Any) -> tuple[str, ...] | None:
    found = decoded(value)
    return None if found is None else tuple(str(text) for text in found)


# How each field is decoded from its attribute (text fields: `str`).
_DECODE = {
    "format": int, "mask_threshold": float,
    "build": decoded, "fill_parameters": decoded, "quality_rules": decoded,
    "source_files": _day_map, "missing_days": _days, "failed_days": _day_reasons,
    "suspicious_days": _day_reasons, "source_base_urls": _texts,
}


@dataclass(frozen=True)
class CubeRecord:
    """A cube's root attributes, decoded. None: the attribute is not in the cube (an older
    cube, or a partial record written by the builder as it goes)."""

    format: int | None = None  # cube.MARKER: what makes a store a sicube cube
    sicube_version: str | None = None  # the sicube that last finished a build or update
    status: str | None = None  # as stored; see `state` for cubes from before it
    finish_command: str | None = None
    last_error: str | None = None
    build: dict | None = None  # the builder's progress record (`sicube.pipeline.plan.BuildState`)
    source_files: dict[str, dict] | None = None  # {YYYYMMDD: provenance}
    missing_days: tuple[str, ...] | None = None  # YYYYMMDD, no file that day
    failed_days: dict[str, str] | None = None  # {YYYYMMDD: reason}
    suspicious_days: dict[str, str] | None = None  # {YYYYMMDD: reason}
    source_directory: str | None = None
    source_base_url: str | None = None
    source_base_urls: tuple[str, ...] | None = None
    source_grid: str | None = None
    source_sensor: str | None = None
    fill_parameters: dict | None = None
    mask_threshold: float | None = None
    mask_source: str | None = None
    mask_span: str | None = None
    suspicious_policy: str | None = None
    quality_rules: dict | None = None
    build_time: str | None = None
    history: str | None = None

    @classmethod
    def from_attrs(cls, source, fields: Iterable[str] | None = None) -> CubeRecord:
        """The record of a Zarr group, an xarray Dataset (its attrs) or a mapping of root
        attributes, in any form a release wrote (see the module's docstring).

        `fields`: decode only these (the others None); a long cube's source files take
        ~0.1 s to decode, too much for a state check on every open.
        """
        attrs: Mapping = getattr(source, "attrs", source)
        values = {}
        for name in KEYS if fields is None else fields:
            value = attrs.get(KEYS[name])
            values[name] = None if value is None else _DECODE.get(name, str)(value)
        return cls(**values)

    def to_attrs(self) -> dict[str, Any]:
        """The record's attributes as the builder writes them (format 2): netCDF-legal
        values (strings and numbers, records as JSON strings); absent (None) fields left
        out, so a partial record updates only its own keys."""
        attrs: dict[str, Any] = {}
        for name, key in KEYS.items():
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, (dict, list, tuple)):  # keys sorted: days in order
                value = json.dumps(list(value) if isinstance(value, tuple) else value,
                                   sort_keys=True)
            attrs[key] = value
        return attrs

    def value(self, key: str) -> Any:
        """The decoded value of the root attribute `key` (None when absent)."""
        return getattr(self, _FIELDS[key])

    def replace(self, **changes) -> CubeRecord:
        """A copy with `changes` (fields by name)."""
        return dataclasses.replace(self, **changes)

    @property
    def state(self) -> str:
        """The cube's state: "building", "complete", "updating" or "failed: reason". Cubes
        written before the state attribute existed say it in their build record."""
        if self.status is not None:
            return self.status
        return cube.COMPLETE if (self.build or {}).get("complete") else cube.BUILDING

    @property
    def grid(self) -> str | None:
        """The product grid the cube's days came from: `source_grid`, else (a folder build
        of sicube 0.1 left it empty) the grid its source files are named on; None if
        neither tells (the cube's coordinates may: `products.grid_of_coords`)."""
        if self.source_grid:
            return self.source_grid
        for provenance in (self.source_files or {}).values():
            name = provenance.get("name") if isinstance(provenance, dict) else None
            parts = products.file_name_parts(str(name or ""))
            if parts is not None:
                return parts.grid
        return None

    @property
    def has_day_lists(self) -> bool:
        """False for a cube from before the day lists (only its build record tells)."""
        return self.missing_days is not None


def check_format(attrs: Mapping, store, *, writing: bool) -> None:
    """Refuse to write (BadInput), or warn on reading, a cube whose format is newer than
    this sicube knows: its record may mean what this code cannot tell."""
    found = attrs.get(cube.MARKER)
    try:
        version = int(found)
    except (TypeError, ValueError):
        version = None
    if version is None or version <= cube.FORMAT_VERSION:
        return
    what = (f"{store}: written by a newer sicube (cube format {version}; this sicube "
            f"knows up to {cube.FORMAT_VERSION})")
    if writing:
        raise BadInput(f"{what}; upgrade sicube to build or update it")
    warnings.warn(f"{what}; reading it as format {cube.FORMAT_VERSION}, upgrade sicube",
                  NewerCubeWarning, stacklevel=3)
