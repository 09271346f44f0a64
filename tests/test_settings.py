"""sicube.configure: process-wide settings that a build from Python gets as the CLI does.

Zarr's thread pool is per process and made once, so each case runs in a fresh interpreter.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap

import pytest
import zarr

from sicube import settings
from sicube.errors import BadInput

from .conftest import ARCHIVE_START


def _run(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])


BUILD = """
    import json, warnings, zarr
    import sicube
    from sicube import settings
    warnings.simplefilter("error")  # no warning: nothing made zarr's pool before the build
    {configure}
    sicube.build("{start}", "{end}", "{store}", source="{source}",
                 chunks={{"time": 4, "y": 64, "x": 64}}, progress=False)
    print(json.dumps({{"config": zarr.config.get("threading.max_workers"),
                       "pool": settings.zarr_pool_size()}}))
"""


@pytest.mark.parametrize("configure, threads", [("", os.cpu_count()),
                                                ("sicube.configure(codec_threads=3)", 3)])
def test_a_build_from_python_gets_the_codec_threads(archive, tmp_path, configure, threads):
    end = ARCHIVE_START + dt.timedelta(days=2)
    got = _run(BUILD.format(configure=configure, start=ARCHIVE_START, end=end,
                            store=tmp_path / "c.zarr", source=archive.root))
    # zarr's own default is no setting and asyncio's pool of cores + 4 threads
    assert got == {"config": threads, "pool": threads}


def test_a_warning_when_zarr_pool_already_exists_with_another_size():
    got = _run("""
        import json, warnings, numpy as np, zarr
        import sicube
        zarr.config.set({"threading.max_workers": 2})
        zarr.create_array({}, shape=(4,), dtype="f4")[:] = np.ones(4)  # zarr makes its pool
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sicube.configure(codec_threads=3)
            sicube.configure(codec_threads=3)  # said once
            sicube.configure(codec_threads=2)  # the pool's size: nothing to say
        print(json.dumps([f"{w.category.__name__}: {w.message}" for w in caught]))
    """)
    assert len(got) == 1
    assert got[0].startswith("RuntimeWarning: zarr's codec thread pool already exists with 2 "
                             "threads, so codec_threads=3 does not apply")


def test_the_users_own_zarr_setting_is_kept_and_bad_values_refused():
    with zarr.config.set({"threading.max_workers": 5}):
        settings.apply()
        assert zarr.config.get("threading.max_workers") == 5
    for bad in (0, -1, 2.5, True, "4"):
        with pytest.raises(BadInput, match="codec_threads must be a positive integer"):
            settings.configure(codec_threads=bad)
    assert settings.current() == settings.Settings()  # a refused call changes nothing


_TOUCH_TWICE = textwrap.dedent("""
    import resource, sys
    from sicube import settings
    if sys.argv[1] == "keep":
        assert settings.keep_freed_memory()

    def touched():  # a chunk-sized buffer, every page written, then freed
        block = bytearray(24 << 20)
        block[::4096] = bytes(len(range(0, 24 << 20, 4096)))
        del block

    touched()  # fresh pages either way
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    touched()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


@pytest.mark.skipif(settings._glibc("mallopt") is None, reason="glibc's mallopt only")
def test_kept_freed_memory_is_reused_without_faulting_pages_in_again():
    """glibc's defaults hand a freed 24 MB buffer back to the OS, and the next one is faulted
    in page by page (6,144 pages); kept, it is reused as it is."""
    faults = {}
    for how in ("default", "keep"):
        done = subprocess.run([sys.executable, "-c", _TOUCH_TWICE, how], capture_output=True,
                              text=True)
        assert done.returncode == 0, done.stderr
        faults[how] = int(done.stdout)
    assert faults["default"] > 3000, faults
    assert faults["keep"] < 300, faults


@pytest.mark.parametrize("command, keeps", [("update", True), ("build", False)])
def test_only_the_update_process_keeps_its_freed_memory(command, keeps):
    probe = textwrap.dedent(f"""
        import sys
        from sicube import __main__ as process, cli, settings
        kept = []
        settings.keep_freed_memory = lambda: kept.append(True) or True
        cli._run_update = cli._run_build = lambda args: print(bool(kept)) or 0
        sys.argv = ["sicube", "{command}", "--store", "no-such-cube", "--end", "20240101"]
        if "{command}" == "build":
            sys.argv += ["--start", "20240101"]
        process.run()
    """)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(keeps)], done.stdout
