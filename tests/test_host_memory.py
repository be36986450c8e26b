"""train/runtime.py `keep_freed_memory`: freed host memory serves the next allocation instead
of going back to the system, which is what removes the page faults from every step."""

import os
import subprocess
import sys
import textwrap

import pytest

from train.runtime import glibc

PROBE = textwrap.dedent(
    """
    import ctypes, resource, sys
    from train.runtime import keep_freed_memory
    kept = keep_freed_memory() if sys.argv[1] == "keep" else False
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    size = 64 * 2**20  # above glibc's largest mmap threshold (32 MiB)

    def fill_and_free():  # as XLA's temporaries: malloc, touch every page, free
        buffer = libc.malloc(size)
        ctypes.memset(buffer, 1, size)
        libc.free(buffer)

    fill_and_free()  # the first allocation faults in either case
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        fill_and_free()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(kept, faults // 4)
    """
)


def faults_per_allocation(mode: str, **env: str) -> tuple[bool, int]:
    environment = {**os.environ, **env}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
        env=environment, cwd=os.path.dirname(os.path.dirname(__file__)),
    )  # fmt: skip
    kept, faults = done.stdout.split()
    return kept == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux") or not glibc(), reason="glibc only")
def test_a_freed_large_allocation_is_reused_without_page_faults():
    pages = 64 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    kept, faults = faults_per_allocation("keep")
    assert kept
    assert faults < pages // 100  # reused: no fresh pages
    kept, faults = faults_per_allocation("default")
    assert not kept
    assert faults > pages // 2  # glibc's default: a fresh mmap, every page faulted again


def test_the_environment_variable_leaves_malloc_alone():
    kept, _ = faults_per_allocation("keep", LINEAGE_KEEP_FREED_MEMORY="0")
    assert not kept
