"""The Gaussian fill on one synthetic block: NumPy in (numba threads), the serial block kernel
that the map_overlap path runs per chunk, and the gufunc."""

from __future__ import annotations

import numpy as np

from sicube.kernels.fill import FillParams, gaussian_fill
from sicube.kernels.fill_kernel import TILE, axis_weights, fill_serial


def gappy_block(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """A (t, y, x) float32 percent block, 40 % missing and one whole missing day."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.0, 100.0, shape).astype(np.float32)
    a[rng.random(shape) < 0.4] = np.nan
    a[shape[0] // 2] = np.nan
    return a


class Fill:
    """Fill one block with the default parameters; numba is warmed in setup."""

    shape = (16, 512, 512)
    warmup_time = 0.5

    def setup(self) -> None:
        self.block = gappy_block(self.shape)
        self.land = np.zeros(self.shape[1:], np.uint8)
        self.land[: self.shape[1] // 4, : self.shape[2] // 4] = 1
        self.params = FillParams()
        p = self.params
        self.gt, self.gs = axis_weights(p.time_window, p.space_window, p.alpha, p.sigma)
        self.core = (0, self.shape[0], 0, self.shape[1], 0, self.shape[2])
        from sicube.kernels.fill import gaussian_fill_gufunc

        self.gufunc = gaussian_fill_gufunc
        self.time_gaussian_fill()  # compile or load every kernel before timing
        self.time_block_kernel()
        self.time_gufunc()

    def time_gaussian_fill(self) -> None:
        p = self.params
        gaussian_fill(self.block, p.time_window, p.space_window, p.alpha, p.sigma,
                      land_mask=self.land)

    def time_block_kernel(self) -> None:
        p = self.params
        fill_serial(self.block, self.land, True, self.core, TILE, p.time_window,
                     p.space_window, self.gt, self.gs)

    def time_gufunc(self) -> None:
        p = self.params
        self.gufunc(self.block, self.land, p.time_window, p.space_window, p.alpha, p.sigma)
