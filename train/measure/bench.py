"""Measuring: compile time, step time side by side, FLOPs (counted from the jaxpr, loops
included: train/measure/flops.py; and XLA's own cost analysis), memory (XLA's memory analysis of the
compiled program and the device's measured peak), and the device's peak FLOP/s to express
achieved FLOP/s as a utilisation. `profile` does all of it for one jitted function.

Times on a shared machine are noisy: compare implementations timed round-robin in one process
(`time_round_robin`), report medians with their spread, and prefer ratios to absolute times.
"""

import dataclasses
import importlib.metadata
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from arch.decoding import generate
from train.measure import flops as flop_count
from train.tasks.language import LanguageModelLoss

TIE = 0.87
"""Speed ratios (ours / theirs, as rates) from TIE up to 1 are a tie: on the shared 2-core
machine the same program measured twice differs by up to ~15%. A time ratio ties up to 1 / TIE."""


@dataclasses.dataclass(frozen=True)
class RandomTokens(LanguageModelLoss):
    """The language-model loss alone, as the task of a train step that a benchmark feeds with
    its own random token batches."""

    vocab_size: int = 256


@dataclasses.dataclass(frozen=True)
class Timing:
    """Seconds per call: the median and the spread of the timed samples."""

    median: float
    min: float
    max: float
    samples: tuple[float, ...]
    calls_per_sample: int

    def rate(self, amount: float) -> dict[str, float]:
        """`amount` per second (e.g. tokens / s): median, and min / max from the spread."""
        return {"median": amount / self.median, "min": amount / self.max, "max": amount / self.min}


def time_round_robin(
    calls: dict[str, Callable[[], Any]], repeats: int = 5, min_sample_seconds: float = 0.2
) -> dict[str, Timing]:
    """Time each call (which must block until its result is ready) in turns: one warm-up, then
    `repeats` passes, each starting at a different call; a sample repeats a call for at least
    `min_sample_seconds` so that short calls are not dominated by timer noise."""
    per_sample = {}
    for name, call in calls.items():
        start = time.perf_counter()
        call()
        warm = time.perf_counter() - start
        per_sample[name] = max(1, math.ceil(min_sample_seconds / max(warm, 1e-9)))
    names = list(calls)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        shift = repeat * len(names) // repeats
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            for _ in range(per_sample[name]):
                calls[name]()
            samples[name].append((time.perf_counter() - start) / per_sample[name])
    return {
        name: Timing(
            statistics.median(s), min(s), max(s), tuple(s), calls_per_sample=per_sample[name]
        )
        for name, s in samples.items()
    }


def compile_timed(function: Callable, *args: Any, **jit_options: Any) -> tuple[Any, float]:
    """(the compiled executable of jit(function) for these arguments, compile seconds)."""
    start = time.perf_counter()
    jitted = function if hasattr(function, "lower") else jax.jit(function, **jit_options)
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - start


def cost(compiled: Any) -> dict[str, float]:
    """XLA's own count for one call of a compiled executable: flops and bytes accessed."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list):  # older JAX: one dict per program
        analysis = analysis[0]
    analysis = analysis or {}
    return {
        "flops": float(analysis.get("flops", float("nan"))),
        "bytes_accessed": float(analysis.get("bytes accessed", float("nan"))),
    }


def memory(compiled: Any) -> dict[str, int]:
    """Bytes the compiled executable needs: arguments, outputs, temporaries, and their sum
    (aliased, donated buffers counted once)."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return {}
    sizes = {
        "argument": analysis.argument_size_in_bytes,
        "output": analysis.output_size_in_bytes,
        "temp": analysis.temp_size_in_bytes,
        "alias": analysis.alias_size_in_bytes,
    }
    sizes["peak_estimate"] = sizes["argument"] + sizes["output"] + sizes["temp"] - sizes["alias"]
    return sizes


def matmul_peak(
    size: int = 2048, dtype: str = "float32", repeats: int = 5, device: Any = None
) -> dict[str, float]:
    """The measured FLOP/s of a square [size, size] x [size, size] product (2 size^3 FLOPs), the
    practical peak that utilisation figures are a fraction of, timed on its own."""
    reference = InterleavedPeak(dtype, size)
    timing = time_round_robin({"matmul": reference.program(device).call}, repeats)
    return {"size": size, "dtype": dtype, **timing["matmul"].rate(reference.flops)}


def cpu_name() -> str:
    """The processor's model name (Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def device_description() -> str:
    device = jax.devices()[0]
    if device.platform == "cpu":
        return f"cpu: {cpu_name()}, {os.cpu_count()} cores"
    return f"{device.platform}: {device.device_kind}"


def load_torch(wanted: bool) -> tuple[Any, str]:
    """(the torch module or None, why not): PyTorch is an optional extra for comparisons,
    set to as many threads as cores (as XLA:CPU uses)."""
    if not wanted:
        return None, "turned off (--no-torch)"
    try:
        import torch  # noqa: PLC0415 (optional)
    except ImportError as error:
        return None, f"not installed ({error}); pip install -e '.[bench]' to compare"
    torch.set_num_threads(os.cpu_count() or 2)
    return torch, ""


def torch_record(torch: Any, reason: str = "") -> dict[str, Any]:
    """What a results file says of the optional PyTorch side: present, why not, threads, version."""
    return {
        "available": torch is not None,
        "reason": reason or None,
        "threads": torch.get_num_threads() if torch is not None else None,
        "version": torch.__version__ if torch is not None else None,
    }


# Dense (no sparsity) peak FLOP/s per device from the vendors' data sheets. float32 on NVIDIA
# Ampere and later is the TF32 tensor-core rate: XLA's default precision for float32 products
# there. Keys are matched as substrings of `device.device_kind`, longest first.
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H200": {"bfloat16": 989e12, "float16": 989e12, "float32": 494e12},
    "H100 PCIe": {"bfloat16": 756e12, "float16": 756e12, "float32": 378e12},
    "H100": {"bfloat16": 989e12, "float16": 989e12, "float32": 494e12},  # SXM
    "A100": {"bfloat16": 312e12, "float16": 312e12, "float32": 156e12},
    "L40S": {"bfloat16": 362e12, "float16": 362e12, "float32": 183e12},
    "L4": {"bfloat16": 121e12, "float16": 121e12, "float32": 60e12},
    "A10G": {"bfloat16": 70e12, "float16": 70e12, "float32": 35e12},
    "V100": {"float16": 125e12, "float32": 15.7e12},
    "T4": {"float16": 65e12, "float32": 8.1e12},
    "TPU v4": {"bfloat16": 275e12, "float32": 275e12},
    "TPU v5 lite": {"bfloat16": 197e12, "float32": 197e12},
    "TPU v5p": {"bfloat16": 459e12, "float32": 459e12},
    "TPU v6 lite": {"bfloat16": 918e12, "float32": 918e12},
}
_measured_peaks: dict[tuple[str, str], float] = {}
PEAK_CALL = "(matmul peak)"


@dataclasses.dataclass(frozen=True)
class InterleavedPeak:
    """The matmul peak timed in the same round-robin passes as the work (`measure`), so that a
    utilisation compares the work with the reference under the same load. A peak measured once
    at the start and a step timed minutes later on a machine that has since become busy gave
    110-134% "utilisation"; per pass, the two share whatever else the machine ran."""

    dtype: str = "float32"
    size: int = 2048
    """Side of the square product: 2048 reaches the practical float32 peak of a 2-core CPU."""

    @property
    def flops(self) -> float:
        return 2.0 * self.size**3

    def program(self, device: Any = None) -> "Program":
        device = device or jax.devices()[0]
        rng = np.random.default_rng(0)
        a, b = (
            jax.device_put(jnp.asarray(rng.standard_normal((self.size,) * 2), self.dtype), device)
            for _ in range(2)
        )
        product, _ = compile_timed(jnp.matmul, a, b)
        return Program(lambda: product(a, b).block_until_ready(), {"flops": self.flops})


def peak_reference(dtype: str = "float32", device: Any = None, size: int = 2048):
    """What utilisation is a fraction of: a known accelerator's data-sheet peak (a dict, as
    `peak_flops`), else an `InterleavedPeak` of `size` for `measure` to time beside the work."""
    found = peak_flops(dtype, device, measure_unknown=False)
    return found or InterleavedPeak(dtype, size)


def peak_flops(
    dtype: str = "float32", device: Any = None, measure_unknown: bool = True
) -> dict[str, Any]:
    """{"flops_per_second", "source"}: the data-sheet peak of a known GPU / TPU, else (CPU, or a
    device not in PEAK_FLOPS) the measured rate of a square matrix product in `dtype`, measured
    once per process ({} instead when not `measure_unknown`)."""
    device = device or jax.devices()[0]
    kind = getattr(device, "device_kind", "")
    for key in sorted(PEAK_FLOPS, key=len, reverse=True):
        if key in kind and dtype in PEAK_FLOPS[key]:
            return {"flops_per_second": PEAK_FLOPS[key][dtype], "source": f"data sheet ({key})"}
    if not measure_unknown:
        return {}
    cache_key = (f"{device.platform}:{kind}", dtype)
    if cache_key not in _measured_peaks:
        _measured_peaks[cache_key] = matmul_peak(dtype=dtype, device=device)["median"]
    return {
        "flops_per_second": _measured_peaks[cache_key],
        "source": f"measured {dtype} 2048^3 matmul on this device",
    }


def device_memory(device: Any = None) -> dict[str, int]:
    """The device allocator's own figures where the backend reports them (GPU, TPU): bytes in
    use now and the process's peak so far (a high-water mark: it never goes down). {} on CPU."""
    device = device or jax.devices()[0]
    try:
        stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001 (backends without allocator statistics)
        return {}
    return {k: int(stats[k]) for k in ("bytes_in_use", "peak_bytes_in_use") if k in stats}


def versions() -> dict[str, str]:
    """The device and the versions that produced a measurement."""
    return {
        "device": device_description(),
        "backend": jax.default_backend(),
        "device_count": str(jax.device_count()),
        **{name: importlib.metadata.version(name) for name in ("jax", "jaxlib", "flax", "optax")},
        "python": platform.python_version(),
    }


@dataclasses.dataclass
class Program:
    """A jitted function compiled for its arguments, ready to be timed: `call()` runs it once
    and blocks; `facts` is what is known before it runs (compile seconds, counted FLOPs, XLA's
    cost and memory analyses)."""

    call: Callable[[], None]
    facts: dict[str, Any]


def program(
    function: Callable, *args: Any, carry: bool = False, flops: float | None = None
) -> Program:
    """Compile `function(*args)` (timed apart from running it) and count its FLOPs from the
    jaxpr (loops included; XLA's own count, in "xla_cost", takes loop bodies once).

    carry: the call's first output is its next first argument (a train step whose state is
    donated, or a decoding loop), so every timed call sees fresh buffers.
    flops: the FLOPs to credit instead of this program's count, e.g. the reference program's
    when this one computes the same thing with loops of unknown trip count (then "uncounted"
    still lists them)."""
    compiled, compile_seconds = compile_timed(function, *args)
    counted = flop_count.count(function, *args)
    if flops is not None:
        counted.flops = flops
    state = {"args": args}

    def call() -> None:
        out = compiled(*state["args"])
        jax.block_until_ready(out)
        if carry:
            state["args"] = (out[0], *state["args"][1:])

    facts = {
        "compile_s": compile_seconds,
        "flops": counted.flops,
        "transcendentals": counted.transcendentals,
        "uncounted": dict(counted.uncounted),
        "xla_cost": cost(compiled),
        "memory": memory(compiled),
    }
    return Program(call, facts)


def measure(
    programs: dict[str, Program | Callable[[], Any]],
    amount: float = 1.0,
    peak: "dict[str, Any] | InterleavedPeak | None" = None,
    repeats: int = 5,
    min_sample_seconds: float = 0.2,
) -> dict[str, dict[str, Any]]:
    """Time programs side by side, round-robin (`time_round_robin`), and say per name: seconds
    per call (median / min / max and the samples), `amount` per second (e.g. tokens), and for a
    Program its facts, the device's measured memory, FLOP/s and utilisation = its FLOPs /
    median time / `peak` (default `peak_flops()` in float32; an `InterleavedPeak` is timed as
    one more call of the same passes, and utilisation is then the median of the per-pass
    ratios). A plain call (another framework's step, which must block until done) gets the
    timings only."""
    calls = {name: p.call if isinstance(p, Program) else p for name, p in programs.items()}
    interleaved = peak if isinstance(peak, InterleavedPeak) else None
    if interleaved is not None:
        calls[PEAK_CALL] = interleaved.program().call
    timings = time_round_robin(calls, repeats, min_sample_seconds)
    if interleaved is not None:
        reference = timings.pop(PEAK_CALL)
        peak = {
            "flops_per_second": interleaved.flops / reference.median,
            "source": f"{interleaved.dtype} {interleaved.size}^3 matmul timed in the same passes",
            "samples": [interleaved.flops / t for t in reference.samples],
        }
    peak = peak or peak_flops()
    results = {}
    for name, timing in timings.items():
        result = {
            "seconds": {"median": timing.median, "min": timing.min, "max": timing.max},
            "samples": list(timing.samples),
            "per_second": timing.rate(amount),
        }
        if isinstance(programs[name], Program):
            facts = programs[name].facts
            achieved = facts["flops"] / timing.median
            result = {
                **facts,
                **result,
                "device_memory": device_memory(),
                "flops_per_second": achieved,
                "utilisation": utilisation(facts["flops"], timing, peak),
                "peak": peak,
            }
        results[name] = result
    return results


def utilisation(flops: float, timing: Timing, peak: dict[str, Any]) -> float:
    """FLOPs / seconds / peak: per pass when the peak was timed in the same passes (sample i of
    the work against sample i of the matmul), the median of those; else against the one peak."""
    if "samples" not in peak:
        return flops / timing.median / peak["flops_per_second"]
    pairs = zip(timing.samples, peak["samples"], strict=True)
    return statistics.median(flops / seconds / rate for seconds, rate in pairs)


def profile(
    function: Callable,
    *args: Any,
    amount: float = 1.0,
    carry: bool = False,
    peak: "dict[str, Any] | InterleavedPeak | None" = None,
    repeats: int = 5,
    min_sample_seconds: float = 0.2,
    flops: float | None = None,
) -> dict[str, Any]:
    """Everything measured about one jitted `function(*args)` (`program`, then `measure`):
    compile seconds, median / min / max seconds per call after a warm-up, `amount` per second,
    counted and XLA's FLOPs, XLA's memory analysis, the device's measured memory, and
    utilisation. Several programs (or another framework's calls) timed side by side: `measure`."""
    compiled = program(function, *args, carry=carry, flops=flops)
    return measure({"call": compiled}, amount, peak, repeats, min_sample_seconds)["call"]


def generation_functions(model: Any, batch: int, length: int, new_tokens: int):
    """(fill, decode) for profiling generation after a prompt of `length` tokens:
    fill(variables, prompt [b, L - 1]) -> the cache after the prompt (jitted; a scan of
    decode_step), and decode(variables, last [b], cache) -> tokens [b, 1 + N], the shared
    `generate` feeding the last prompt token and producing N greedy tokens (N + 1 decode steps)."""

    @jax.jit
    def fill(variables: dict, prompt: jax.Array) -> Any:
        def feed(cache: Any, column: jax.Array) -> tuple[Any, None]:  # column [b]
            return model.apply(variables, cache, column, method=model.decode_step)[1], None

        return jax.lax.scan(feed, model.init_cache(batch, length + new_tokens), prompt.T)[0]

    def decode(variables: dict, last: jax.Array, cache: Any) -> jax.Array:
        return generate(model, variables, last[:, None], new_tokens, cache=cache)

    return fill, decode


def generation_program(model: Any, variables: dict, prompt: jax.Array, new_tokens: int) -> str:
    """The text of the decoding program after `prompt` [b, L] (nothing is run): two models
    whose texts are equal decode with one and the same program."""
    b, length = prompt.shape
    fill, decode = generation_functions(model, b, length, new_tokens)
    cache = jax.eval_shape(fill, variables, prompt[:, :-1])
    return str(jax.make_jaxpr(decode)(variables, prompt[:, -1], cache))


def profile_generation(
    model: Any, variables: dict, prompt: jax.Array, new_tokens: int, **options: Any
) -> dict[str, Any]:
    """`profile` of generating N tokens after `prompt` [b, L]: the cache is filled with the
    first L - 1 tokens (untimed), then `generate` feeds the last one and produces N greedy
    tokens. Adds ms_per_token (median / N) and cache_bytes (the filled cache's bytes: a
    recurrent state, or keys and values for every position)."""
    b, length = prompt.shape
    fill, decode = generation_functions(model, b, length, new_tokens)
    filled = jax.block_until_ready(fill(variables, prompt[:, :-1]))
    result = profile(decode, variables, prompt[:, -1], filled, amount=b * new_tokens, **options)
    result["ms_per_token"] = 1e3 * result["seconds"]["median"] / new_tokens
    result["cache_bytes"] = int(sum(leaf.nbytes for leaf in jax.tree.leaves(filled)))
    return result
