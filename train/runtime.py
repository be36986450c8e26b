"""Process-wide JAX settings that a run may ask for: the persistent compilation cache."""

import os

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
