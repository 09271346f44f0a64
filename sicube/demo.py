"""`python -m sicube demo`: the whole pipeline, offline, on a generated archive.

Generates a realistic sample archive, serves it on the loopback mirror (with a few
injected faults, so the retries show), builds the cube through the real downloader and
builder, exports the mask, draws the three maps and pulls one DataLoader batch.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path

from sicube.archive import products
from sicube.archive.mirror import Mirror
from sicube.archive.synthetic import write_archive
from sicube.errors import BadInput, require_extra
from sicube.params import DEFAULT_GRID
from sicube.pipeline.build import BuildSummary, build
from sicube.pipeline.mask import export_mask

DEMO_START = dt.date(2024, 4, 1)
# A flaky server: one day answers 503 then a truncated body, another an HTML page.
DEMO_FAULTS = {"20240403": ["503", "truncate"], "20240406": ["html"]}


@dataclass
class DemoResult:
    """Where the demo put everything, and what it saw."""

    out: Path
    cube: Path
    mask: Path
    maps: dict[str, Path] = field(default_factory=dict)
    summary: BuildSummary | None = None
    batch_shapes: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())

    def text(self) -> str:
        """The closing screen: what was built and where it is."""
        inputs, targets = self.batch_shapes
        lines = [self.summary.text() if self.summary else "", "", "demo outputs:",
                 f"  cube       {self.cube}   (xarray.open_zarr or sicube.open_cube)",
                 f"  land mask  {self.mask}"]
        lines += [f"  map        {path}" for path in self.maps.values()]
        lines.append(f"  DataLoader batch: inputs {inputs}, targets {targets} "
                     "(batch, time, channel, y, x)")
        lines.append(f"next: python -m sicube info {self.cube}")
        return "\n".join(lines)


def run_demo(days: int = 30, out: str | os.PathLike = "demo", *, step: int = 2, seed: int = 0,
             workers: int = 2, grid: str = DEFAULT_GRID, progress: bool = True) -> DemoResult:
    """Run the pipeline on `days` generated days of `grid` (coarsened `step` times) under
    `out`. The mirror serves the grid under its own URL path, as the Bremen server does, and
    the build downloads from that URL."""
    # The maps and the DataLoader batch come last: a missing extra is refused before the
    # minutes of generating, serving and building, not after them.
    require_extra("plot", "sicube.demo", "matplotlib")
    require_extra("torch", "sicube.demo", "torch")
    if not isinstance(days, int) or days < 8:
        raise BadInput(f"--days must be an integer of at least 8, got {days!r}")
    if grid not in products.GRIDS:
        raise BadInput(f"--grid {grid!r}: choose from {', '.join(products.GRIDS)}")
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BadInput(f"--out {out}: cannot create it ({err.strerror})") from err
    end = DEMO_START + dt.timedelta(days=days - 1)
    archive = write_archive(out / "archive", DEMO_START, end, step=step, seed=seed, grid=grid,
                            progress=progress)
    result = DemoResult(out=out, cube=out / "cube.zarr", mask=out / "land_mask.nc")
    with Mirror(archive.root, faults=DEMO_FAULTS, grid=grid) as mirror:
        if progress:
            print(f"serving the sample archive at {mirror.base_url}")
        result.summary = build(DEMO_START, end, result.cube, base_url=mirror.base_url,
                               raw_dir=out / "downloads", progress=progress)
    export_mask(result.cube, result.mask)
    result.maps = _maps(result.cube, out, archive.missing, end)
    result.batch_shapes = _one_batch(result.cube, end, workers)
    return result


def _maps(store: Path, out: Path, missing: list[dt.date], end: dt.date) -> dict[str, Path]:
    from sicube.views import plot

    # Show the fill where it matters most: on a day with no file at all, if there is one.
    compare_day = missing[0] if missing else DEMO_START + (end - DEMO_START) // 2
    figures = {
        "day": plot.plot_day(store=store, date=DEMO_START + dt.timedelta(days=1)),
        "mask": plot.plot_mask(store),
        "compare": plot.plot_compare(store, compare_day),
    }
    return {name: plot.save_figure(fig, out / f"{name}.png") for name, fig in figures.items()}


def _one_batch(store: Path, end: dt.date, workers: int):
    from torch.utils.data import DataLoader

    from sicube.ml.dataset import SICDataset

    data = SICDataset(store, DEMO_START, end, input_length=5, pred_length=3)
    loader = DataLoader(data, batch_size=4, shuffle=True, num_workers=workers)
    inputs, targets = next(iter(loader))
    return tuple(inputs.shape), tuple(targets.shape)
