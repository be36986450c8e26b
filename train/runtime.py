"""Process-wide settings that a run may ask for: the persistent compilation cache, and host
memory that is reused instead of returned to the system between steps."""

import ctypes
import os
import sys

import jax
from jax.experimental.compilation_cache import compilation_cache


def default_cache_dir() -> str:
    """$LINEAGE_CACHE_DIR, else $XDG_CACHE_HOME/lineage/jax, else ~/.cache/lineage/jax."""
    if os.environ.get("LINEAGE_CACHE_DIR"):
        return os.environ["LINEAGE_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "lineage", "jax")


def enable_compilation_cache(cache_dir: str | None = None) -> str:
    """Keep compiled programs on disk so the next start skips XLA compilation.

    Every program is cached, however quick its compile: a tiny model's start is dominated by
    many sub-second compiles (init, train step, eval step).
    """
    cache_dir = cache_dir or default_cache_dir()
    os.makedirs(cache_dir, exist_ok=True)
    if jax.config.jax_compilation_cache_dir != cache_dir:
        # JAX decides once, at a process's first compilation, whether it uses a cache: reset
        # that decision so the cache works even when something was compiled before.
        compilation_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return cache_dir


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
INT_MAX = 2**31 - 1


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed host memory for the next allocation (every call of a
    compiled CPU program allocates its temporaries afresh); True where it was set.

    By default glibc serves an allocation of more than 32 MiB (and any allocation from a
    worker thread's own arena that outgrows it) with a fresh `mmap` and returns it to the
    system when freed, so every step of a program whose temporaries exceed that touches
    fresh pages: 10,000 page faults (40 MB) per step of a b32 d256 LSTM at 64 steps, 41,000
    at 256, which took a fifth of its step time (README.md, "Host memory"). This sets the
    three parameters the environment variables MALLOC_ARENA_MAX=1, MALLOC_MMAP_MAX_=0 and
    MALLOC_TRIM_THRESHOLD_ would: one arena for all threads, no mmap, no trimming; memory
    freed stays in the process and serves the next step's allocation of the same size. The
    process's resident memory then stays at its high-water mark, as with any caching
    allocator.

    Call it before the first JAX computation: a thread that already has its own arena keeps
    it (the mmap and trim settings still apply). `python -m train` and every `python -m
    experiments.<name>` call it first; LINEAGE_KEEP_FREED_MEMORY=0 leaves malloc as it is.
    Not glibc (macOS, musl): nothing to do, False.
    """
    if os.environ.get("LINEAGE_KEEP_FREED_MEMORY", "1") == "0":
        return False
    if not sys.platform.startswith("linux") or not glibc():
        return False
    mallopt = ctypes.CDLL(None).mallopt  # mallopt(int, int) -> 1 on success
    settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, INT_MAX))
    return all(mallopt(parameter, value) == 1 for parameter, value in settings)


def glibc() -> bool:
    """Whether this process runs on GNU libc."""
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError):  # the name is unknown to this C library
        return False
