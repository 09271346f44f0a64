"""asv benchmarks of sicube, one module per area: the fill, dataset item reads, a small build.

Run from ``asv_bench/`` (see the README's Development section). Each class's sizes are class
attributes so that tests/test_asv.py can run every benchmark once on tiny inputs.
"""
