"""train/measure/bench.py: the measurement harness reports what it says it does (no timing
asserts)."""

import statistics

import jax
import jax.numpy as jnp
import pytest

from train.measure import bench


def test_profile_reports_counts_memory_and_a_consistent_utilisation():
    x = jnp.ones((128, 128))
    peak = {"flops_per_second": 1e12, "source": "given"}
    result = bench.profile(
        lambda a: jnp.tanh(a @ a), x, amount=128, peak=peak, repeats=2, min_sample_seconds=0.01
    )
    assert result["flops"] == 2 * 128**3 and result["transcendentals"] == 128 * 128
    assert result["xla_cost"]["flops"] == pytest.approx(2 * 128**3, rel=0.01)
    assert result["memory"]["argument"] == result["memory"]["output"] == 128 * 128 * 4
    s = result["seconds"]
    assert 0 < s["min"] <= s["median"] <= s["max"] and result["compile_s"] > 0
    assert result["per_second"]["median"] == pytest.approx(128 / s["median"])
    assert result["utilisation"] == pytest.approx(2 * 128**3 / s["median"] / 1e12)


def test_profile_carry_threads_a_donated_state_through_the_calls():
    step = jax.jit(lambda state, x: (state + x, state.sum()), donate_argnums=0)
    result = bench.profile(
        step,
        jnp.zeros(4),
        jnp.ones(4),
        carry=True,
        repeats=2,
        min_sample_seconds=0.01,
        peak={"flops_per_second": 1.0, "source": ""},
    )
    assert result["flops"] == 4 + 4  # one add, one 4-element sum


def test_measure_times_programs_and_plain_calls_side_by_side():
    x = jnp.ones((64, 64))
    calls = []
    programs = {
        "jax": bench.program(lambda a: a @ a, x),
        "other": lambda: calls.append(1),  # another framework's step: timings only
    }
    peak = {"flops_per_second": 1e12, "source": "given"}
    results = bench.measure(programs, amount=64, peak=peak, repeats=3, min_sample_seconds=0.0)
    assert set(results) == {"jax", "other"}
    assert len(calls) == 1 + 3  # a warm-up, then one call per pass (0 s samples: one call)
    assert "flops" not in results["other"] and len(results["other"]["samples"]) == 3
    jax_result = results["jax"]
    assert jax_result["flops"] == 2 * 64**3 and jax_result["compile_s"] > 0
    s = jax_result["seconds"]
    assert s["min"] <= s["median"] <= s["max"] and len(jax_result["samples"]) == 3
    assert jax_result["utilisation"] == pytest.approx(2 * 64**3 / s["median"] / 1e12)


def test_peak_flops_uses_the_data_sheet_for_known_devices_and_measures_otherwise():
    class FakeH100:
        platform, device_kind = "gpu", "NVIDIA H100 80GB HBM3"

    class FakePCIe:
        platform, device_kind = "gpu", "NVIDIA H100 PCIe"

    assert bench.peak_flops("bfloat16", FakeH100())["flops_per_second"] == 989e12
    assert bench.peak_flops("bfloat16", FakePCIe())["flops_per_second"] == 756e12  # longest key
    measured = bench.peak_flops("float32")  # this CPU: not in the table
    assert measured["source"].startswith("measured") and measured["flops_per_second"] > 1e8


def test_an_interleaved_peak_is_timed_in_the_same_passes_and_utilisation_is_per_pass():
    x = jnp.ones((64, 64))
    programs = {"jax": bench.program(lambda a: a @ a @ a, x)}
    peak = bench.InterleavedPeak("float32", size=64)
    result = bench.measure(programs, peak=peak, repeats=5, min_sample_seconds=0.0)["jax"]
    assert bench.PEAK_CALL not in result and len(result["peak"]["samples"]) == 5
    rates = result["peak"]["samples"]
    assert result["peak"]["flops_per_second"] == pytest.approx(statistics.median(rates))
    per_pass = [4 * 64**3 / t / r for t, r in zip(result["samples"], rates, strict=True)]
    assert result["utilisation"] == pytest.approx(statistics.median(per_pass))


def test_peak_reference_is_the_data_sheet_where_known_and_interleaved_otherwise():
    class FakeH100:
        platform, device_kind = "gpu", "NVIDIA H100 80GB HBM3"

    known = bench.peak_reference("bfloat16", FakeH100())
    assert known == {"flops_per_second": 989e12, "source": "data sheet (H100)"}
    assert bench.peak_reference("float32", size=256) == bench.InterleavedPeak("float32", 256)


def test_versions_and_device_memory_are_reported():
    info = bench.versions()
    assert info["jax"] == jax.__version__ and info["backend"] == jax.default_backend()
    memory = bench.device_memory()
    stats = jax.devices()[0].memory_stats()
    if not stats:  # the CPU backend keeps no allocator statistics: nothing is reported
        assert memory == {}
    else:
        assert set(memory) == {"bytes_in_use", "peak_bytes_in_use"} & set(stats)
        assert all(isinstance(v, int) and v >= 0 for v in memory.values())


class FakeDevice:
    def __init__(self, stats):
        self.stats = stats

    def memory_stats(self):
        if isinstance(self.stats, Exception):
            raise self.stats
        return self.stats


def test_device_memory_reports_the_allocator_figures_it_finds_and_nothing_else():
    stats = {"bytes_in_use": 3.0, "peak_bytes_in_use": 7, "num_allocs": 11}
    assert bench.device_memory(FakeDevice(stats)) == {"bytes_in_use": 3, "peak_bytes_in_use": 7}
    assert bench.device_memory(FakeDevice({"peak_bytes_in_use": 5})) == {"peak_bytes_in_use": 5}
    assert bench.device_memory(FakeDevice(None)) == {}  # a backend without statistics
    assert bench.device_memory(FakeDevice(RuntimeError("unsupported"))) == {}
