"""sicube: AMSR2 sea-ice concentration to analysis- and ML-ready Zarr datacubes."""

__version__ = "0.1.0"


# --- dataset (lazy: importing torch takes seconds; `import sicube` must not) ---
_LAZY = {"SICDataset": "sicube.dataset", "SICStream": "sicube.dataset"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sicube' has no attribute {name!r}")
