"""Numerical kernels: the Gaussian gap fill and cell areas."""
